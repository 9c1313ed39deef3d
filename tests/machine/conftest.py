from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.machine.harness import Harness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness.create(tmp_path)
    yield h
    h.close()


@pytest.fixture(scope="session")
def machine_wheelhouse() -> Path:
    """The machine wheels (x86_64 + aarch64, cp39-cp313), fetched once into a cache outside the repo.

    ``CLOUDKEEP_TEST_WHEELHOUSE`` names another folder (an air-gapped CI fills it beforehand);
    a filled cache is reused without touching the network. Each Python's set is resolved by that
    Python where it is installed (pip evaluates markers for the interpreter running it).
    """
    from cloudkeep.machine.bundle.wheelhouse import fetch_wheelhouse
    from tests.machine.pythons import find_pythons

    folder = os.environ.get("CLOUDKEEP_TEST_WHEELHOUSE") or Path.home() / ".cache/cloudkeep-test/wheelhouse"
    interpreters = {f"{p.version[0]}.{p.version[1]}": str(p.path) for p in find_pythons()}
    return fetch_wheelhouse(Path(folder), interpreters=interpreters)
