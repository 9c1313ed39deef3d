from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.machine.harness import Harness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness.create(tmp_path)
    yield h
    h.close()
