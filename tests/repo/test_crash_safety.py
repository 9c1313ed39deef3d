"""Crash safety and concurrency: no half-written restore point, reruns resume, parallel backups."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cloudkeep.errors import RepositoryWriteError
from cloudkeep.repo import Repository, backup_files, check, list_snapshots, restore
from cloudkeep.storage import ObjectStore
from tests.repo.conftest import PASSWORD, ancestor_trees, blob_ids, restored, write_tree
from tests.repo.faults import FaultyStore


def big_source(root: Path) -> Path:
    root.mkdir()
    for n in range(6):
        (root / f"f{n}.bin").write_bytes(__import__("random").Random(n).randbytes(2**20))
    return root


def test_failed_snapshot_write_leaves_no_restore_point(
    repo: Repository, store: ObjectStore, tmp_path: Path
) -> None:
    src = big_source(tmp_path / "src")
    faulty = FaultyStore(store, fail_put=lambda key: key.startswith("snapshots/"))
    broken = Repository.open(faulty, PASSWORD)
    with pytest.raises(RepositoryWriteError, match="injected failure writing snapshots/"):
        backup_files(broken, [src], hostname="h")
    assert list_snapshots(repo) == []
    # Everything uploaded was indexed: the rerun stores nothing of the source, at most the trees of
    # the folders above it (other processes may have changed /tmp meanwhile).
    rerun = Repository.open(store, PASSWORD)
    before = blob_ids(rerun)
    snap = backup_files(rerun, [src], hostname="h")
    assert blob_ids(Repository.open(store, PASSWORD)) - before <= ancestor_trees(rerun, snap.tree, src)
    assert snap.stats["bytes_new"] < 4096
    assert check(Repository.open(store, PASSWORD), read_data=True).ok


def test_crash_mid_upload_rerun_reuses_indexed_packs(
    repo: Repository, store: ObjectStore, tmp_path: Path
) -> None:
    src = big_source(tmp_path / "src")
    indexed: list[str] = []

    def fail_once_packs_are_indexed(key: str) -> bool:
        """The first pack upload that starts after an index file was written fails (~12 packs, an
        index file every 8: counting packs alone raced the index file's writer under load)."""
        if key.startswith("index/"):
            indexed.append(key)
        return key.startswith("data/") and bool(indexed)

    broken = Repository.open(FaultyStore(store, fail_put=fail_once_packs_are_indexed), PASSWORD)
    with pytest.raises(RepositoryWriteError, match="injected failure writing data/"):
        backup_files(broken, [src], hostname="h", threads=1)
    assert list_snapshots(repo) == []
    fresh = Repository.open(store, PASSWORD)
    assert len(fresh.index) > 0  # the killed run's packs were indexed
    snap = backup_files(fresh, [src], hostname="h")
    assert snap.stats["bytes_new"] < 6 * 2**20 * 0.8
    restore(fresh, snap.id, tmp_path / "out")
    assert restored(tmp_path / "out", src / "f5.bin").read_bytes() == (src / "f5.bin").read_bytes()
    report = check(fresh, read_data=True)
    assert report.ok, report.problems


def test_concurrent_backups_into_one_repository(repo: Repository, store: ObjectStore, tmp_path: Path) -> None:
    sources = [write_tree(tmp_path / f"m{n}", seed=n) for n in range(3)]
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            agent_repo = Repository.open(store, PASSWORD)  # each agent has its own view, no lock
            results[n] = backup_files(agent_repo, [sources[n]], hostname=f"machine{n}").id
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    fresh = Repository.open(store, PASSWORD)
    assert check(fresh, read_data=True).ok
    for n, sid in results.items():
        restore(fresh, sid, tmp_path / f"out{n}")
        assert (
            restored(tmp_path / f"out{n}", sources[n] / "blob.bin").read_bytes()
            == (sources[n] / "blob.bin").read_bytes()
        )
    assert list(store.list("sessions/")) == []  # every session marker was cleaned up


_KILLED_BACKUP = """
import sys
from pathlib import Path
from cloudkeep.repo import Repository, backup_files
from cloudkeep.storage import open_store

repo = Repository.open(open_store(sys.argv[1]), sys.argv[2])

def progress(p):
    print(p.bytes_uploaded, flush=True)

# In threads (packs of the repository's 1 MiB, so 12 MiB uploaded is past the first index file);
# a worker process's packs may end a chunk group past the size. Workers killed: test_procworkers.py.
source, limit = [Path(sys.argv[3])], 4 * 2**20
backup_files(repo, source, hostname="h", progress=progress, bandwidth_limit=limit, threads=1, processes=False)
print("finished", flush=True)
"""


@pytest.mark.slow
def test_sigkill_mid_backup_then_rerun(tmp_path: Path) -> None:
    """A real process killed with SIGKILL while uploading: no restore point, the repository checks
    clean, staged leftovers are invisible, and the rerun reuses what was indexed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from cloudkeep.repo.pack import STAGING_PACK_PREFIX
    from cloudkeep.storage import open_store
    from tests.repo.conftest import FAST_KDF, SMALL_CHUNKS

    url = f"file://{tmp_path}/repo"
    Repository.create(open_store(url), PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=2**20)
    src = tmp_path / "src"
    src.mkdir()
    for n in range(8):
        (src / f"f{n}.bin").write_bytes(__import__("random").Random(n).randbytes(3 * 2**20))
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_BACKUP, url, PASSWORD, str(src)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    deadline = time.monotonic() + 60
    for line in child.stdout:  # progress lines: bytes uploaded so far
        assert line.strip() != "finished", "the backup ended before it could be killed"
        if int(line) >= 12 * 2**20:  # well past the first index file (written every 8 packs)
            break
        assert time.monotonic() < deadline, "no upload progress"
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    store = open_store(url)
    repo = Repository.open(store, PASSWORD)
    assert list_snapshots(repo) == [] and len(repo.index) > 0
    assert list(tmp_path.joinpath("repo").rglob(f"{STAGING_PACK_PREFIX}*")), "expected staged leftovers"
    assert not any(STAGING_PACK_PREFIX in info.key for info in store.list(""))
    report = check(repo, read_data=True)
    assert report.ok, report.problems
    indexed = sum(
        e.raw_length for _, entries in repo.index.pack_entries() for e in entries if e.type == "data"
    )
    assert indexed >= 6 * 2**20  # at least the first batch of 8 one-MiB packs was indexed before the kill
    snap = backup_files(repo, [src], hostname="h")
    # Stored again: exactly the data that was not indexed, plus the new trees (~25 KiB of chunk ids).
    assert 0 <= snap.stats["bytes_new"] - (24 * 2**20 - indexed) < 64 * 1024
    restore(repo, snap.id, tmp_path / "out")
    for n in range(8):
        assert restored(tmp_path / "out", src / f"f{n}.bin").read_bytes() == (src / f"f{n}.bin").read_bytes()
