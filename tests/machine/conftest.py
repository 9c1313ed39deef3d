from __future__ import annotations

import fcntl
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

    default = Path.home() / ".cache/cloudkeep-test/wheelhouse"
    folder = Path(os.environ.get("CLOUDKEEP_TEST_WHEELHOUSE") or default)
    interpreters = {f"{p.version[0]}.{p.version[1]}": str(p.path) for p in find_pythons()}
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Test workers (pytest -n) share the cache: one fills it while the others wait, then reuse it.
    with (folder.parent / f".{folder.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return fetch_wheelhouse(folder, interpreters=interpreters)
