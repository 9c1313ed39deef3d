"""Fixtures for engine tests: a fresh repository on the in-memory backend (fast), plus source trees."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudkeep.repo import KdfParams, Repository
from cloudkeep.repo.cache import FileCache, RowSpill
from cloudkeep.repo.chunker import ChunkerParams
from cloudkeep.storage import ObjectStore, open_store
from cloudkeep.storage.memory import MemoryStore
from tests.storage.conftest import make_s3_bucket

PASSWORD = "correct horse battery staple"
# A restore's own threads (reader, sorter, decoders, the worker's sender and answers), by name:
# other tests in the same process may leave threads of their own behind.
RESTORE_THREADS = ("ck-restore", "ck-read-", "ck-decode-")
FAST_KDF = KdfParams(n=2**10)
# Small chunks and packs so that a few MiB of test data exercise many chunks and several packs.
SMALL_CHUNKS = ChunkerParams(min_size=16 * 1024, avg_size=64 * 1024, max_size=256 * 1024, seed=7)


@pytest.fixture
def store() -> Iterator[ObjectStore]:
    name = "repo-" + uuid.uuid4().hex
    yield open_store(f"memory://{name}")
    MemoryStore.forget(name)


@pytest.fixture
def s3_store(aws_options: dict[str, Any], unique_name: str) -> ObjectStore:
    """A store in a new bucket of the test session's moto server (started only when asked for)."""
    make_s3_bucket(aws_options, unique_name)
    return open_store(f"s3://{unique_name}/repo", **aws_options)


@pytest.fixture(params=["threads", "worker"])
def restore_worker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a restore test twice: on the parent's threads alone, and with restore's worker process
    taking general work from the first file on (``restorer.PROC_FILES``) — small test trees would
    otherwise never start one."""
    from cloudkeep.repo import restorer

    if request.param == "worker":
        monkeypatch.setattr(restorer, "PROC_FILES", 0)
        monkeypatch.setattr(restorer, "RESTORE_PROCS", 1)
    else:
        monkeypatch.setattr(restorer, "RESTORE_PROCS", 0)
    return str(request.param)


@pytest.fixture
def repo(store: ObjectStore) -> Repository:
    return Repository.create(store, PASSWORD, pack_size=512 * 1024, kdf=FAST_KDF, chunker=SMALL_CHUNKS)


@pytest.fixture
def spills(monkeypatch: pytest.MonkeyPatch) -> list[RowSpill]:
    """Every spill a backup's file cache makes (a large folder's row written as it is made)."""
    made: list[RowSpill] = []
    spill = FileCache.spill

    def spilling(self: FileCache) -> RowSpill:
        made.append(spill(self))
        return made[-1]

    monkeypatch.setattr(FileCache, "spill", spilling)
    return made


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


def ancestor_trees(repo: Repository, tree_id: str, source: Path) -> set[bytes]:
    """The tree ids above ``source`` in a restore point: they hold the metadata of ``/tmp`` and the
    other folders above it, which other processes change at any moment, so a rerun may store them
    anew while everything of ``source`` itself dedups."""
    ids, current = {bytes.fromhex(tree_id)}, bytes.fromhex(tree_id)
    for part in source.parts[1:-1]:
        node = next(n for n in repo.load_tree(current) if n.name == part)
        assert node.subtree is not None
        current = node.subtree
        ids.add(current)
    return ids


def subtree_of(repo: Repository, tree_id: str, source: Path) -> bytes:
    """The tree id of the folder ``source`` in a restore point."""
    current = bytes.fromhex(tree_id)
    for part in source.parts[1:]:
        node = next(n for n in repo.load_tree(current) if n.name == part)
        assert node.subtree is not None
        current = node.subtree
    return current


def built_only_above(built: list[list[str]], source: Path) -> bool:
    """Whether every tree in ``built`` (entry names per tree) is one of the folders above ``source``,
    each of which lists only the next folder on the way down."""
    return all(len(names) == 1 and names[0] in source.parts[1:] for names in built)


def blob_ids(repo: Repository) -> set[bytes]:
    """Every blob the repository's index knows."""
    return {entry.id for _, entries in repo.index.pack_entries() for entry in entries}


def until_ctime_moves(path: Path, change: Callable[[], object]) -> None:
    """Apply ``change``; again while the file system's coarse clock still gives the old ctime
    (the cache, like restic's, cannot tell apart two states within one clock tick)."""
    before = os.lstat(path).st_ctime_ns
    deadline = time.monotonic() + 10
    change()
    while os.lstat(path).st_ctime_ns == before:
        assert time.monotonic() < deadline, "ctime never moved"
        change()


def restored(target: Path, source: Path) -> Path:
    """Where ``source`` lands under a restore target (absolute paths are kept, like restic)."""
    return target / str(source).lstrip("/")
