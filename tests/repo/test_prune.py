"""Prune: two-phase delete with grace, repacking, safety against concurrent backups, object lock."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cloudkeep.repo import (
    PruneResult,
    Repository,
    RetentionPolicy,
    backup_files,
    check,
    forget,
    forget_snapshots,
    prune,
    restore,
)
from cloudkeep.repo.steps import hooked
from cloudkeep.repo.writer import BlobWriter
from cloudkeep.storage import ObjectStore
from tests.repo.conftest import PASSWORD, restored

HOUR = timedelta(hours=1)


def data_size(store: ObjectStore) -> int:
    return sum(i.size for i in store.list("data/"))


def make(path: Path, seed: int, size: int = 2**20) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "data.bin").write_bytes(random.Random(seed).randbytes(size))
    return path


def test_two_phase_delete_after_grace(repo: Repository, store: ObjectStore, tmp_path: Path) -> None:
    old = backup_files(repo, [make(tmp_path / "a", 1)], hostname="h")
    new = backup_files(repo, [make(tmp_path / "a", 2)], hostname="h")  # same source, new content
    before = data_size(store)
    forget(repo, RetentionPolicy(keep_last=1), hostname="h")
    now = datetime.now(UTC)
    first = prune(repo, now=now)
    assert first.packs_marked > 0 and first.packs_deleted == 0
    assert data_size(store) == before  # nothing deleted before the grace period
    too_soon = prune(repo, now=now + timedelta(minutes=30))
    assert too_soon.packs_deleted == 0 and too_soon.marks_pending == 1
    second = prune(repo, now=now + 2 * HOUR)
    assert second.packs_deleted == first.packs_marked and second.bytes_freed > 0
    assert data_size(store) < before * 0.6
    fresh = Repository.open(store, PASSWORD)
    assert check(fresh, read_data=True).ok
    restore(fresh, new.id, tmp_path / "out")
    assert (
        restored(tmp_path / "out", tmp_path / "a" / "data.bin").read_bytes()
        == (tmp_path / "a" / "data.bin").read_bytes()
    )
    assert old.id not in {s.id for s in fresh.snapshots()}


def test_repack_partially_used_packs(store: ObjectStore, tmp_path: Path) -> None:
    from tests.repo.conftest import FAST_KDF, SMALL_CHUNKS

    repo = Repository.create(store, PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=8 * 2**20)
    src = tmp_path / "src"
    src.mkdir()
    for n in range(4):  # all four files land in one pack
        (src / f"f{n}").write_bytes(random.Random(n).randbytes(2**20))
    backup_files(repo, [src], hostname="h")
    for n in range(3):
        (src / f"f{n}").unlink()
    keep = backup_files(repo, [src], hostname="h")
    forget(repo, RetentionPolicy(keep_last=1))
    now = datetime.now(UTC)
    first = prune(repo, now=now)
    assert first.packs_repacked == 1 and first.blobs_repacked > 0
    prune(repo, now=now + 2 * HOUR)
    assert data_size(store) < 2 * 2**20
    fresh = Repository.open(store, PASSWORD)
    assert check(fresh, read_data=True).ok
    restore(fresh, keep.id, tmp_path / "out")
    assert restored(tmp_path / "out", src / "f3").read_bytes() == (src / "f3").read_bytes()


def test_backup_running_during_prune_blocks_sweep(
    repo: Repository, store: ObjectStore, tmp_path: Path
) -> None:
    """A backup whose dedup index predates the mark may reuse marked blobs: sweep must wait for it."""
    src = make(tmp_path / "a", 1)
    first = backup_files(repo, [src], hostname="h")
    agent = Repository.open(store, PASSWORD)
    now = datetime.now(UTC)
    outcomes: dict[str, PruneResult] = {}

    def prune_while_backup_runs(name: str) -> None:
        if name != "backup:doomed-refreshed" or outcomes:
            return
        forget_snapshots(repo, [first.id])
        assert first.id not in {s.id for s in repo.snapshots()}
        outcomes["mark"] = prune(repo, now=now)
        for info in store.list("sessions/"):  # the agent is still alive two hours later
            repo.write_marker(info.key, {**repo.read_marker(info.key), "seen": (now + 2 * HOUR).isoformat()})
        outcomes["blocked"] = prune(repo, now=now + 2 * HOUR)

    with hooked(prune_while_backup_runs):
        snap = backup_files(agent, [src], hostname="h")
    assert outcomes["mark"].packs_marked > 0
    assert outcomes["blocked"].packs_deleted == 0 and outcomes["blocked"].marks_pending == 1
    assert snap.stats["bytes_new"] < 100_000  # it deduplicated against the marked packs
    swept = prune(repo, now=now + 2 * HOUR)
    assert swept.packs_resurrected > 0  # its blobs are needed again: not deleted
    fresh = Repository.open(store, PASSWORD)
    assert check(fresh, read_data=True).ok
    restore(fresh, snap.id, tmp_path / "out")
    assert restored(tmp_path / "out", src / "data.bin").read_bytes() == (src / "data.bin").read_bytes()


def test_new_backups_do_not_dedup_against_marked_packs(
    repo: Repository, store: ObjectStore, tmp_path: Path
) -> None:
    src = make(tmp_path / "a", 1)
    first = backup_files(repo, [src], hostname="h")
    forget_snapshots(repo, [first.id])
    now = datetime.now(UTC)
    prune(repo, now=now)
    snap = backup_files(Repository.open(store, PASSWORD), [src], hostname="h")
    assert snap.stats["bytes_new"] >= 2**20  # re-uploaded rather than pointing at doomed packs
    prune(repo, now=now + 2 * HOUR)
    fresh = Repository.open(store, PASSWORD)
    assert check(fresh, read_data=True).ok


def test_interrupted_backup_leftovers_are_collected(
    repo: Repository, store: ObjectStore, tmp_path: Path
) -> None:
    src = make(tmp_path / "a", 1)
    writer = BlobWriter(repo, hostname="crashed")
    writer.save("data", (src / "data.bin").read_bytes())
    writer.flush()  # uploaded and indexed, but no snapshot will ever reference it
    # The crashed backup's session marker stays behind; prune treats it as stale after the grace.
    now = datetime.now(UTC)
    prune(repo, now=now + 2 * HOUR)
    assert prune(repo, now=now + 4 * HOUR).packs_deleted > 0
    assert data_size(store) == 0
    assert list(store.list("sessions/")) == []


def test_prune_respects_object_lock(repo: Repository, store: ObjectStore, tmp_path: Path) -> None:
    until = datetime.now(UTC) + timedelta(days=7)
    backup_files(repo, [make(tmp_path / "a", 1)], hostname="h", retain_until=until)
    before = data_size(store)
    result = forget(repo, RetentionPolicy(keep_last=1), now=datetime.now(UTC))
    assert result.removed == []
    now = datetime.now(UTC)
    prune(repo, now=now)
    prune(repo, now=now + 2 * HOUR)
    assert data_size(store) == before
    assert check(Repository.open(store, PASSWORD)).ok
