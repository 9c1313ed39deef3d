"""Fixtures for engine tests: a fresh repository on the in-memory backend (fast), plus source trees."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudkeep.repo import KdfParams, Repository
from cloudkeep.repo.chunker import ChunkerParams
from cloudkeep.storage import ObjectStore, open_store
from cloudkeep.storage.memory import MemoryStore

PASSWORD = "correct horse battery staple"
FAST_KDF = KdfParams(n=2**10)
# Small chunks and packs so that a few MiB of test data exercise many chunks and several packs.
SMALL_CHUNKS = ChunkerParams(min_size=16 * 1024, avg_size=64 * 1024, max_size=256 * 1024, seed=7)


@pytest.fixture
def store() -> Iterator[ObjectStore]:
    name = "repo-" + uuid.uuid4().hex
    yield open_store(f"memory://{name}")
    MemoryStore.forget(name)


@pytest.fixture
def repo(store: ObjectStore) -> Repository:
    return Repository.create(store, PASSWORD, pack_size=512 * 1024, kdf=FAST_KDF, chunker=SMALL_CHUNKS)


def write_tree(root: Path, seed: int = 1) -> Path:
    """A small but varied source tree: text, binary, empty file, empty dir, symlink, hardlink, nesting."""
    rng = __import__("random").Random(seed)
    (root / "docs" / "deep" / "er").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "docs" / "readme.txt").write_text("hello cloudkeep\n" * 500)
    (root / "docs" / "deep" / "er" / "notes.md").write_text("# notes\n" + "line\n" * 100)
    (root / "blob.bin").write_bytes(rng.randbytes(3 * 2**20))
    (root / "empty.txt").write_bytes(b"")
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "script.sh", 0o750)
    os.symlink("docs/readme.txt", root / "link-to-readme")
    os.link(root / "blob.bin", root / "blob-hardlink.bin")
    return root


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "src")


def restored(target: Path, source: Path) -> Path:
    """Where ``source`` lands under a restore target (absolute paths are kept, like restic)."""
    return target / str(source).lstrip("/")
