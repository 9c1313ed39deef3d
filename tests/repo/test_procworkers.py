"""File content read in worker processes (repo/procpool.py, repo/procworker.py): the same restore
point and chunk ids as threads, per-file errors, cancel, a worker killed mid-run, and no worker
left working when the backing-up process is killed."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cloudkeep.repo import (
    Repository,
    backup_files,
    check,
    filecontent,
    folders,
    list_snapshots,
    list_tree,
    procpool,
    restore,
)
from cloudkeep.repo import archiver as archiver_module
from cloudkeep.repo.browse import lookup, walk
from cloudkeep.repo.index import decode_index_file
from cloudkeep.repo.pack import DATA, STAGING_PACK_PREFIX, BlobEntry, private_staging_dir
from cloudkeep.repo.tree import FileText
from cloudkeep.storage import ObjectStore, open_store
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, restored


def _tree(root: Path) -> Path:
    """Small files in batches (some with equal content), an empty one, large multi-chunk files
    (one repeating a stretch of another), a file with an xattr, a symlink."""
    rng = random.Random(3)
    for d in range(4):
        folder = root / f"d{d}"
        folder.mkdir(parents=True)
        for i in range(30):
            data = b"same\n" * 40 if i % 7 == 0 else rng.randbytes(rng.randrange(1, 12000))
            (folder / f"f{i:02}").write_bytes(data)
    (root / "empty").write_bytes(b"")
    big = rng.randbytes(5 * SMALL_CHUNKS.max_size)
    (root / "big.bin").write_bytes(big)
    (root / "big-again.bin").write_bytes(rng.randbytes(100_000) + big[: 3 * SMALL_CHUNKS.max_size])
    (root / "text.log").write_bytes(b"".join(b"line %d of a log\n" % i for i in range(60_000)))
    os.setxattr(root / "text.log", "user.note", b"kept")
    os.symlink("big.bin", root / "link")
    (root / os.fsdecode(b"caf\xe9 \n name")).write_bytes(b"a name that is not UTF-8\n")
    return root


def _contents(repo: Repository, snap_id: str, root: Path) -> dict[str, tuple[list[bytes], dict[str, bytes]]]:
    top = lookup(repo, snap_id, str(root))
    assert top.subtree is not None
    return {
        path: (list(node.content), dict(node.xattrs))
        for path, node in walk(repo, top.subtree, str(root))
        if node.type == "file"
    }


@pytest.fixture
def workers(monkeypatch: pytest.MonkeyPatch) -> list[procpool.ProcWorker]:
    """Every worker process started (to check they were used, and that they ended)."""
    started: list[procpool.ProcWorker] = []
    real = procpool.ProcWorker.__init__

    def init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        real(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(procpool.ProcWorker, "__init__", init)
    return started


def _staged_by(started: list[procpool.ProcWorker]) -> list[str]:
    folder = private_staging_dir()
    tags = tuple(STAGING_PACK_PREFIX + w.tag for w in started)
    return [name for name in os.listdir(folder) if name.startswith(tags)] if tags else []


def test_blob_entries_cross_the_channel_whole() -> None:
    """A worker's pack entries are pickled to the parent and come back as entries, not tuples."""
    entries = [BlobEntry("data", bytes(range(32)), 7, 100, 150), BlobEntry("tree", b"\xff" * 32, 0, 1, 0)]
    back = pickle.loads(pickle.dumps(entries, protocol=pickle.HIGHEST_PROTOCOL))
    assert back == entries and all(type(entry) is BlobEntry for entry in back)


def test_workers_store_the_same_chunks_as_threads(
    repo: Repository, tmp_path: Path, workers: list[procpool.ProcWorker]
) -> None:
    src = _tree(tmp_path / "src")
    by_threads = backup_files(repo, [src], hostname="h", processes=False)
    assert not workers
    blobs = len(repo.index)
    by_workers = backup_files(repo, [src], hostname="h", processes=True, threads=2)
    assert len(workers) == 2 and all(w.proc.returncode == 0 for w in workers)  # used, then ended
    # Same chunk ids, file by file (dedup is exact): the second run stored no data blob.
    assert _contents(repo, by_workers.id, src) == _contents(repo, by_threads.id, src)
    assert _contents(repo, by_workers.id, src)[f"{src}/text.log"][1] == {"user.note": b"kept"}
    new_trees = len(repo.index) - blobs
    assert new_trees <= 6  # at most the changed folders' trees (atimes), no data
    assert by_workers.stats["bytes_read"] == by_threads.stats["bytes_read"]
    assert check(repo, read_data=True).ok


def test_nodes_written_by_workers_give_the_threads_trees(
    repo: Repository, tmp_path: Path, workers: list[procpool.ProcWorker]
) -> None:
    """A worker writes the tree text of each file it reads (``tree.FileText``): every tree, and so
    the restore point's top tree id, is byte for byte the one the parent's own nodes give, for
    hardlinked, sparse, xattr'd, empty and oddly named files too."""
    src = _tree(tmp_path / "src")
    os.link(src / "d1" / "f03", src / "d2" / "hard")  # links > 1: inode and device in the node
    with open(src / "sparse", "wb") as fh:
        fh.truncate(3 * 2**20)
        fh.write(b"head")
    os.setxattr(src / "d0" / "f05", "user.k", b"\x00\xffv")
    (src / "d3" / ('"quoted"\\ \u00e9\u2603')).write_bytes(b"x" * 900)
    os.chown(src / "d3" / "f01", 4242, 4343)  # owners with no name here
    by_threads = backup_files(repo, [src], hostname="h", processes=False)
    by_workers = backup_files(repo, [src], hostname="h", processes=True, threads=2)
    assert len(workers) == 2 and by_workers.stats["files_unchanged"] == 0  # every file read again
    assert by_workers.tree == by_threads.tree


def test_one_worker_beside_a_thread_stores_the_same_chunks(
    repo: Repository, tmp_path: Path, workers: list[procpool.ProcWorker]
) -> None:
    """``process_limit=1`` with two pool threads: one thread hands its batches to the only worker,
    the other reads files itself; the restore point is the threads' own, chunk for chunk."""
    src = _tree(tmp_path / "src")
    by_threads = backup_files(repo, [src], hostname="h", processes=False)
    mixed = backup_files(repo, [src], hostname="h", processes=True, threads=2, process_limit=1)
    assert len(workers) == 1 and workers[0].proc.returncode == 0  # one started, used, then ended
    assert _contents(repo, mixed.id, src) == _contents(repo, by_threads.id, src)
    assert mixed.stats["bytes_read"] == by_threads.stats["bytes_read"] and mixed.stats["errors_total"] == 0
    restore(repo, mixed.id, tmp_path / "out")
    out = restored(tmp_path / "out", src)
    assert subprocess.run(["diff", "-r", "--no-dereference", str(src), str(out)]).returncode == 0
    assert not _staged_by(workers)


@pytest.mark.parametrize("version", [2, 3])
def test_a_first_backup_by_workers_restores_equal(
    store: ObjectStore, tmp_path: Path, workers: list[procpool.ProcWorker], version: int
) -> None:
    """Format 3 (a data key per pack, wrapped for the server) and format 2 (the master key)."""
    repo = Repository.create(
        store, PASSWORD, pack_size=512 * 1024, kdf=FAST_KDF, chunker=SMALL_CHUNKS, version=version
    )
    src = _tree(tmp_path / "src")
    snap = backup_files(repo, [src], hostname="h", processes=True)
    assert workers and snap.stats["errors_total"] == 0
    assert snap.stats["bytes_new"] < snap.stats["bytes_read"]  # big-again.bin and equal small files dedup
    restore(repo, snap.id, tmp_path / "out")
    out = restored(tmp_path / "out", src)
    assert subprocess.run(["diff", "-r", "--no-dereference", str(src), str(out)]).returncode == 0
    assert os.getxattr(out / "text.log", "user.note") == b"kept"
    assert check(repo, read_data=True).ok
    assert not _staged_by(workers)
    # The rerun dedups against what the workers stored: no data read is new.
    again = backup_files(repo, [src], hostname="h", processes=False)
    assert _contents(repo, again.id, src) == _contents(repo, snap.id, src)


@pytest.mark.parametrize("version", [2, 3])
def test_a_large_files_chunks_sealed_in_parallel_stay_in_their_packs_key(
    store: ObjectStore, tmp_path: Path, workers: list[procpool.ProcWorker], version: int
) -> None:
    """A worker seals a large file's new chunks on its encoder threads, a whole chunk group into
    the pack open then (every blob of a pack under that pack's key, format 3's data keys too).
    A group may carry a pack past its size, as the serial path's single chunks cannot: that is
    how this test knows the parallel path ran."""
    repo = Repository.create(
        store, PASSWORD, pack_size=512 * 1024, kdf=FAST_KDF, chunker=SMALL_CHUNKS, version=version
    )
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(11)
    (src / "large.bin").write_bytes(rng.randbytes(6 * 2**20))  # incompressible: stored raw
    lines = (b"record %d of a compressible file\n" % i for i in range(200_000))
    (src / "large.log").write_bytes(b"".join(lines))
    (src / "small.txt").write_bytes(b"beside them\n")
    snap = backup_files(repo, [src], hostname="h", processes=True, threads=1)
    assert workers and snap.stats["errors_total"] == 0
    sizes = [info.size for info in store.list() if "data/" in info.key]
    assert max(sizes) > repo.config.pack_size + SMALL_CHUNKS.max_size
    assert check(repo, read_data=True).ok  # every blob opens with its own pack's key
    restore(repo, snap.id, tmp_path / "out")
    out = restored(tmp_path / "out", src)
    assert subprocess.run(["diff", "-r", str(src), str(out)]).returncode == 0
    assert not _staged_by(workers)


def test_a_file_replaced_under_a_worker_is_skipped_alone(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: list[procpool.ProcWorker]
) -> None:
    """Root reads anything: the file the walk stat'ed is replaced (a symlink, another inode)
    before the worker opens it, which refuses both; the rest of the batch is stored."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        (src / f"f{i}").write_text(f"content {i}\n" * 50)
    real = archiver_module._Archiver.proc_nodes

    def proc_nodes(self, files):  # type: ignore[no-untyped-def]
        (src / "f4").unlink()
        os.symlink("f3", src / "f4")
        (src / "f6").rename(src / "f6.old")
        (src / "f6").write_text("another file now\n")
        return real(self, files)

    monkeypatch.setattr(archiver_module._Archiver, "proc_nodes", proc_nodes)
    snap = backup_files(repo, [src], hostname="h", processes=True)
    assert workers
    errors = sorted((e["path"], e["error"]) for e in snap.stats["errors"])
    assert errors == [
        (f"{src}/f4", "cannot read (Too many levels of symbolic links)"),
        (f"{src}/f6", "cannot read (replaced while being backed up)"),
    ]
    names = {e.path for e in list_tree(repo, snap.id, str(src))}
    assert names == {f"{src}/f{i}" for i in range(10) if i not in (4, 6)}
    restore(repo, snap.id, tmp_path / "out")
    out = restored(tmp_path / "out", src)
    assert all((out / f"f{i}").read_text() == f"content {i}\n" * 50 for i in range(10) if i not in (4, 6))


class Cancelled(Exception):
    pass


def test_cancel_mid_run_stops_the_workers_and_commits_nothing(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: list[procpool.ProcWorker]
) -> None:
    src = _tree(tmp_path / "src")
    first = backup_files(repo, [src / "d0"], hostname="h", processes=False)
    asked: list[str | None] = []
    real = archiver_module._Archiver.go_on

    def go_on(self, path):  # type: ignore[no-untyped-def]
        asked.append(path)
        if len(asked) == 3:
            self.report(path, force=True)  # the progress callback, unthrottled, at a worker's question
        return real(self, path)

    def progress(_: Any) -> None:
        if len(asked) >= 3:
            raise Cancelled

    monkeypatch.setattr(archiver_module._Archiver, "go_on", go_on)
    with pytest.raises(Cancelled):
        backup_files(repo, [src], hostname="h", processes=True, progress=progress)
    assert workers and all(w.proc.returncode is not None for w in workers)
    assert not _staged_by(workers)
    assert [s.id for s in list_snapshots(repo)] == [first.id]
    assert check(repo).ok
    rerun = backup_files(repo, [src], hostname="h", processes=True)
    assert rerun.stats["errors_total"] == 0 and check(repo, read_data=True).ok


def test_a_workers_batch_fills_its_slots_on_the_filler_and_a_failure_there_ends_the_backup(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: list[procpool.ProcWorker]
) -> None:
    """The slots of a batch a worker read are filled (and the trees they complete stored) on the
    ``ck-fill`` thread; a tree that fails to store there fails the backup, which still ends (every
    slot filled) and commits nothing."""
    src = _tree(tmp_path / "src")
    first = backup_files(repo, [src / "d1"], hostname="h", processes=False)
    fillers: set[str] = set()
    real_fill, real_tree = folders.Folder.fill, folders.Folder._tree

    def fill(self: folders.Folder, slot: int, node: Any) -> None:
        if isinstance(node, FileText):
            fillers.add(threading.current_thread().name)
        real_fill(self, slot, node)

    monkeypatch.setattr(folders.Folder, "fill", fill)
    snap = backup_files(repo, [src], hostname="h", processes=True, threads=1)
    assert workers and {name.rsplit("_", 1)[0] for name in fillers} == {"ck-fill"}

    def tree(self: folders.Folder) -> bytes:
        if self.path.endswith("/d2"):
            raise RuntimeError("tree store failed")
        return real_tree(self)

    monkeypatch.setattr(folders.Folder, "_tree", tree)
    with pytest.raises(RuntimeError, match="tree store failed"):
        backup_files(repo, [src], hostname="h", processes=True, threads=1)
    assert {s.id for s in list_snapshots(repo)} == {first.id, snap.id}
    assert all(w.proc.returncode is not None for w in workers)


def test_a_worker_killed_mid_run_fails_the_backup_and_loses_nothing(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: list[procpool.ProcWorker]
) -> None:
    src = _tree(tmp_path / "src")
    first = backup_files(repo, [src / "d1"], hostname="h", processes=False)
    runs: list[int] = []
    real = procpool.ProcWorker.run

    def run(self, items, progress):  # type: ignore[no-untyped-def]
        runs.append(self.pid)
        if len(runs) == 3:  # after two batches went through: kill -9, as the OOM killer would
            os.kill(self.pid, signal.SIGKILL)
        return real(self, items, progress)

    monkeypatch.setattr(procpool.ProcWorker, "run", run)
    lost = r"killed by signal 9\).*nothing of this run is committed"
    with pytest.raises(procpool.WorkerLostError, match=lost):
        backup_files(repo, [src], hostname="h", processes=True)
    assert all(w.proc.returncode is not None for w in workers)
    assert not _staged_by(workers)
    assert [s.id for s in list_snapshots(repo)] == [first.id]  # the previous restore point, intact
    assert check(repo, read_data=True).ok
    monkeypatch.setattr(procpool.ProcWorker, "run", real)
    rerun = backup_files(repo, [src], hostname="h", processes=True)
    assert rerun.stats["errors_total"] == 0
    restore(repo, rerun.id, tmp_path / "out")
    out = restored(tmp_path / "out", src)
    assert subprocess.run(["diff", "-r", "--no-dereference", str(src), str(out)]).returncode == 0


def test_a_worker_that_never_starts_is_killed_and_threads_read_the_files(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An interpreter stuck before it says "ready" (an import hanging on a dead network mount)
    does not hang the backup: it is killed past the start timeout and the threads read the files."""
    src = _tree(tmp_path / "src")
    by_threads = backup_files(repo, [src], hostname="h", processes=False)
    spawned: list[subprocess.Popen[bytes]] = []
    real_spawn = procpool.spawn

    def spawn(module: str, pass_fds: tuple[int, ...] = ()) -> tuple[subprocess.Popen[bytes], Any]:
        proc, channel = real_spawn(module, pass_fds)
        spawned.append(proc)
        return proc, channel

    monkeypatch.setattr(procpool, "spawn", spawn)
    monkeypatch.setattr(procpool, "_BOOT", "import time; time.sleep(600)")  # never reads its init
    monkeypatch.setattr(procpool, "START_TIMEOUT_S", 0.3)
    caplog.set_level("WARNING", logger=procpool.__name__)
    snap = backup_files(repo, [src], hostname="h", processes=True, threads=2, process_limit=1)
    assert len(spawned) == 1 and spawned[0].returncode == -signal.SIGKILL  # tried once, then killed
    assert "did not start within 0.3 s" in caplog.text and "reading files in threads" in caplog.text
    assert snap.stats["errors_total"] == 0
    assert _contents(repo, snap.id, src) == _contents(repo, by_threads.id, src)


def test_by_default_workers_start_past_a_threshold_on_enough_cores(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: list[procpool.ProcWorker]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a small backup\n")
    monkeypatch.setattr(archiver_module, "PROCESSES_MIN_CPUS", 1)  # as on a machine with enough cores
    snap = backup_files(repo, [src], hostname="h")
    assert not workers and lookup(repo, snap.id, f"{src}/a") is not None  # below PROCESSES_FROM
    assert filecontent.PROCESSES_FROM >= 2**20
    monkeypatch.setattr(archiver_module, "PROCESSES_FROM", 0)
    monkeypatch.setattr(archiver_module, "usable_cpus", lambda: 2)
    backup_files(repo, [src], hostname="h")
    assert len(workers) == 2  # a first backup on two cores: a worker per core (lanes.py)
    monkeypatch.setattr(archiver_module, "PROCESSES_MIN_CPUS", 3)
    backup_files(repo, [src], hostname="h")
    assert len(workers) == 2  # too few cores: threads


def test_many_small_files_start_a_worker_though_their_content_is_small(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: list[procpool.ProcWorker]
) -> None:
    """Each file is work besides its bytes: a folder of tiny files is what the parent's GIL cannot
    take alone, yet by content it never reached the threshold."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(200):
        (src / f"f{i:03d}").write_text(f"tiny {i}\n")  # ~1.6 KiB of content in all
    file_work = filecontent.FILE_WORK
    monkeypatch.setattr(archiver_module, "PROCESSES_MIN_CPUS", 1)
    monkeypatch.setattr(archiver_module, "PROCESSES_FROM", 100 * file_work)
    monkeypatch.setattr(filecontent, "FILE_WORK", 0)  # by content alone
    by_content = backup_files(repo, [src], hostname="h")
    assert not workers
    monkeypatch.setattr(filecontent, "FILE_WORK", file_work)
    by_files = backup_files(repo, [src], hostname="h")
    assert workers, "200 files are twice the threshold's work"
    assert _contents(repo, by_files.id, src) == _contents(repo, by_content.id, src)


@pytest.mark.parametrize(
    ("all_from", "most", "expected"),
    [(1, 4, 3), (1, 2, 2)],  # every pool thread, capped
)
def test_by_default_a_worker_per_pool_thread_on_enough_cores(
    repo: Repository,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: list[procpool.ProcWorker],
    all_from: int,
    most: int,
    expected: int,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(600):  # many batches: every pool thread takes some
        (src / f"f{i:03d}").write_bytes(os.urandom(3000))
    monkeypatch.setattr(archiver_module, "PROCESSES_MIN_CPUS", 1)
    monkeypatch.setattr(archiver_module, "PROCESSES_FROM", 0)
    monkeypatch.setattr(archiver_module, "PROCESSES_ALL_CPUS", all_from)
    monkeypatch.setattr(archiver_module, "MAX_PROCESSES", most)
    asked = []  # pool threads that asked for a worker
    real = procpool.ProcPool.worker

    def worker(self: procpool.ProcPool) -> procpool.ProcWorker | None:
        asked.append(threading.get_ident())
        return real(self)

    monkeypatch.setattr(procpool.ProcPool, "worker", worker)
    snap = backup_files(repo, [src], hostname="h", threads=3)
    assert snap.stats["errors_total"] == 0 and lookup(repo, snap.id, f"{src}/f399") is not None
    assert len(set(asked)) == 3  # every thread had batches
    assert len(workers) == expected


@pytest.mark.parametrize("cache", [False, True])
def test_below_enough_cores_a_first_backup_runs_a_worker_per_core_and_an_incremental_one(
    repo: Repository,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: list[procpool.ProcWorker],
    cache: bool,
) -> None:
    """Below ``PROCESSES_ALL_CPUS`` a first backup sends jobs to a worker per core (``lanes.py``),
    no pool thread asks for one; a backup that finds a last backup's rows in its cache runs one
    worker beside the pool's threads (the walk looks the rows up itself)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(600):
        (src / f"f{i:03d}").write_bytes(os.urandom(3000))
    monkeypatch.setattr(archiver_module, "usable_cpus", lambda: 2)
    monkeypatch.setattr(archiver_module, "PROCESSES_MIN_CPUS", 2)
    monkeypatch.setattr(archiver_module, "PROCESSES_FROM", 0)
    if cache:  # a last backup's rows, none of which match: every file is read again
        backup_files(repo, [src], hostname="h", processes=False, cache_dir=tmp_path / "cache")
        for i in range(600):
            (src / f"f{i:03d}").write_bytes(os.urandom(3000))
    asked = []
    real = procpool.ProcPool.worker

    def worker(self: procpool.ProcPool) -> procpool.ProcWorker | None:
        asked.append(threading.get_ident())
        return real(self)

    monkeypatch.setattr(procpool.ProcPool, "worker", worker)
    snap = backup_files(repo, [src], hostname="h", threads=2, cache_dir=tmp_path / "cache")
    assert snap.stats["errors_total"] == 0 and snap.stats["bytes_read"] == 600 * 3000
    assert len(workers) == (1 if cache else 2) and bool(asked) == cache


_CHILD = """
import sys
from cloudkeep.repo import Repository, archiver, backup_files
from cloudkeep.storage import open_store

def go_on(self, path):  # a worker waits on this answer: hold it here until killed
    print("ready", flush=True)
    sys.stdin.read()

archiver._Archiver.go_on = go_on
repo = Repository.open(open_store(sys.argv[1]), sys.argv[2])
backup_files(repo, [sys.argv[3]], hostname="h", processes=True)
"""


def test_killing_the_backup_process_leaves_no_worker_behind(tmp_path: Path) -> None:
    """kill -9 of the agent: its workers see their pipe close and end (no orphan keeps working)."""
    src = _tree(tmp_path / "src")
    url = f"file://{tmp_path}/repo"
    Repository.create(open_store(url), PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, url, PASSWORD, str(src)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        kids = _children(child.pid)
        assert kids  # the workers
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in kids) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for the exit, with a deadline
        assert not any(_alive(pid) for pid in kids)
    finally:
        child.kill()
        child.wait()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            found.extend(int(p) for p in fh.read().split())
    return found


def _alive(pid: int) -> bool:
    """Running (not a zombie: an orphan's exit is reaped by init, possibly a little later)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_batch_asks_about_its_last_chunks_with_its_results(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: list[procpool.ProcWorker]
) -> None:
    """Batches of small files are one chunk group each: the worker names the group's chunks with
    the batch's results and stores the new ones when the next batch (or ``finish``) brings the
    answer, so no batch waits on a question of its own. Dedup stays exact: a file repeated across
    folders (batches, workers) is stored once, and every file restores."""
    src = tmp_path / "src"
    for d in range(4):  # 1,200 files: more than four batches
        folder = src / f"d{d}"
        folder.mkdir(parents=True)
        for i in range(300):
            rng = random.Random(d * 1000 + i)
            (folder / f"f{i:03}").write_bytes(
                b"in every folder\n" * 40 if i % 10 == 0 else rng.randbytes(700)
            )
    kinds: list[str] = []
    real = procpool.ProcWorker.recv

    def recv(self):  # type: ignore[no-untyped-def]
        message = real(self)
        kinds.append(message[0])
        return message

    monkeypatch.setattr(procpool.ProcWorker, "recv", recv)
    snap = backup_files(repo, [src], hostname="h", processes=True, threads=2)
    assert workers and kinds.count("done") >= 4 and "ids" not in kinds  # before: one "ids" per batch
    copies: Counter[bytes] = Counter()
    for info in repo.store.list("index/"):
        for entries in decode_index_file(repo.crypter, info.key, repo.store.get(info.key)).values():
            copies.update(entry.id for entry in entries if entry.type == DATA)
    files = _contents(repo, snap.id, src)
    assert set(copies) == {blob for content, _ in files.values() for blob in content}
    assert max(copies.values()) == 1  # stored once, though 120 files in 4 folders hold it
    assert check(repo, read_data=True).ok
    restore(repo, snap.id, tmp_path / "out")
    out = restored(tmp_path / "out", src)
    assert subprocess.run(["diff", "-r", str(src), str(out)]).returncode == 0
