"""A repository with sources and what each restore point must restore: the prune-safety oracle.

The invariant every prune-safety test checks: every restore point present in the repository
checks clean (every referenced blob indexed, every pack readable and intact) and restores
byte for byte what was backed up, and a new backup afterwards does too.
"""

from __future__ import annotations

import hashlib
import random
from datetime import datetime, timedelta
from pathlib import Path

from cloudkeep.repo import Repository, backup_files, check, restore
from cloudkeep.storage import ObjectStore
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS

HOUR = timedelta(hours=1)
KIB = 1024


def store_now(store: ObjectStore) -> datetime:
    """The store's own clock. Prune's injected ``now`` is built on it because session markers and
    locks are judged by their modification time on the store."""
    store.put("clock-probe", b"")
    info = store.stat("clock-probe")
    store.delete("clock-probe")
    assert info is not None and info.modified is not None
    return info.modified


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.name not in files:
            old.unlink()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


class World:
    """One repository, its sources, and the expected content of each restore point."""

    def __init__(self, store: ObjectStore, root: Path, *, create: bool = True) -> None:
        self.store, self.root = store, root
        if create:
            Repository.create(store, PASSWORD, pack_size=512 * KIB, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
        self.expected: dict[str, dict[str, str]] = {}  # restore point id → path → sha256
        self.outputs = 0

    def open(self) -> Repository:
        return Repository.open(self.store, PASSWORD)

    def record(self, snapshot_id: str, source: Path) -> None:
        self.expected[snapshot_id] = digests(source)

    def backup(self, source: Path, hostname: str = "h") -> str:
        snap = backup_files(self.open(), [source], hostname=hostname)
        self.record(snap.id, source)
        return snap.id

    def forget(self, snapshot_id: str) -> None:
        repo = self.open()
        self.store.delete(repo.snapshot_key(snapshot_id))
        self.expected.pop(snapshot_id, None)

    def verify(self) -> None:
        """Every restore point present checks clean and restores what was backed up."""
        repo = self.open()
        report = check(repo, read_data=True)
        assert report.ok, [str(p) for p in report.problems]
        present = set(repo.snapshot_ids())
        for sid in sorted(present & set(self.expected)):
            self.outputs += 1
            target = self.root / f"out{self.outputs}"
            restore(repo, sid, target)
            got = {path: sha for path, sha in digests(target).items()}
            want = self.expected[sid]
            assert sorted(got.values()) == sorted(want.values()), f"restore point {sid} lost data"


def digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
