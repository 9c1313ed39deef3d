"""A first backup's worker processes as lanes (repo/lanes.py, repo/procsubtree.py, repo/walkplan.py):
whole folders and the parts of large folders that workers store give the threads' own trees, cache
rows, counts and skipped entries, with masks too; a worker killed mid-run, a cancel, or a folder
swapped under a worker commits nothing wrong; an incremental (a cache with rows) uses no lanes."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from cloudkeep.repo import (
    Repository,
    backup_files,
    check,
    filecontent,
    folders,
    lanes,
    list_snapshots,
    procpool,
    restore,
)
from cloudkeep.repo import archiver as archiver_module
from cloudkeep.repo.browse import lookup
from cloudkeep.repo.cache import RowSpill
from tests.repo.conftest import restored


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Lanes on any machine, for small trees: two workers from the first byte, folders handed over
    whole up to a sixth of the work (``_tree``: the chain below ``a/b``), larger ones of files in
    parts of 8 names (the flat folders). Returns the kinds of the jobs sent, as they are sent."""
    monkeypatch.setattr(archiver_module, "usable_cpus", lambda: 2)
    monkeypatch.setattr(archiver_module, "PROCESSES_MIN_CPUS", 2)
    monkeypatch.setattr(archiver_module, "PROCESSES_FROM", 0)
    monkeypatch.setattr(archiver_module, "JOB_SPLIT", 6)
    monkeypatch.setattr(archiver_module, "JOB_LEAST", 0)
    monkeypatch.setattr(filecontent, "PART_ENTRIES", 8)
    sent: list[str] = []
    real = procpool.ProcWorker.send_job

    def send_job(self: procpool.ProcWorker, message: tuple[Any, ...], done: Any) -> None:
        sent.append(message[0])
        real(self, message, done)

    monkeypatch.setattr(procpool.ProcWorker, "send_job", send_job)
    return sent


def _tree(root: Path) -> Path:
    """Folders of every size: a chain of small ones (handed over whole), two flat folders of 60
    files (in parts, one with a small subfolder, walked in its part), entries of every kind."""
    for flat in (root / "flat0", root / "a" / "flat1"):
        flat.mkdir(parents=True)
        for i in range(60):
            (flat / f"f{i:02}").write_bytes(os.urandom(300 + 97 * i) if i % 5 else b"same\n" * 50)
    (root / "a" / "flat1" / "sub").mkdir()
    (root / "a" / "flat1" / "sub" / "inner").write_bytes(b"inside a part\n")
    deep = root / "a" / "b" / "c" / "d"  # "a" holds more than a sixth: "a/b" goes whole
    deep.mkdir(parents=True)
    for level in (root / "a", root / "a" / "b", deep):
        for i in range(3):
            (level / f"n{i}").write_bytes(os.urandom(2000))
    (root / "empty").write_bytes(b"")
    (deep / "empty").write_bytes(b"")
    os.link(root / "flat0" / "f03", root / "a" / "b" / "hard")
    with open(root / "a" / "sparse", "wb") as fh:
        fh.truncate(200 * 1024)
        fh.write(b"tail")
    os.setxattr(root / "flat0" / "f07", "user.k", b"\x00v")
    os.setxattr(root / "a" / "b", "user.dir", b"folder")
    os.symlink("../flat0/f01", root / "a" / "link")
    os.mkfifo(root / "a" / "b" / "fifo")
    (root / "a" / os.fsdecode(b"caf\xe9 name")).write_bytes(b"not UTF-8\n")
    (root / "flat0" / '"quoted"\\ \u00e9').write_bytes(b"x" * 900)
    os.chown(root / "flat0" / "f02", 4242, 4343)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "a" / "b" / "sock"))  # never backed up, by either
    listener.close()
    return root


def _listing(root: Path) -> dict[str, Any]:
    """Every entry below ``root`` as a restore gives it back: content, link target, xattrs, mode
    (sockets are never backed up)."""
    found: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISSOCK(st.st_mode):
            continue
        link = stat.S_ISLNK(st.st_mode)
        what = os.readlink(path) if link else path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        names = os.listxattr(path, follow_symlinks=False)
        xattrs = {name: os.getxattr(path, name, follow_symlinks=False) for name in names}
        found[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), what, xattrs)
    return found


def _subtree(repo: Repository, snap_id: str, root: Path) -> bytes | None:
    """The tree id of ``root`` (the folders above it change as the test writes beside it)."""
    return lookup(repo, snap_id, str(root)).subtree


def _cache_rows(cache: Path, root: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The cache's rows for ``root`` and below (the folders above it change as the test writes)."""
    (db,) = cache.rglob("files-*.sqlite")
    with sqlite3.connect(db) as conn:
        rows = {
            table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            for table in ("files", "folders", "large")
        }
    below = (str(root), str(root) + "/")
    return {
        table: [row for row in found if os.fsdecode(row[0]).startswith(below)]
        for table, found in rows.items()
    }


@pytest.mark.parametrize("row_piece", [1024, 16])
def test_lanes_give_the_threads_trees_rows_and_counts(
    repo: Repository,
    tmp_path: Path,
    jobs: list[str],
    row_piece: int,
    spills: list[RowSpill],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With rows in pieces too (16: the flat folders' rows then go through spills, written
    from the nodes by threads and joined from the parts by lanes)."""
    monkeypatch.setattr(folders, "ROW_PIECE", row_piece)
    src = _tree(tmp_path / "src")
    by_threads = backup_files(repo, [src], hostname="h", processes=False, cache_dir=tmp_path / "c1")
    assert not jobs
    by_lanes = backup_files(repo, [src], hostname="h", cache_dir=tmp_path / "c2")
    assert {"subtree", "part"} <= set(jobs)  # whole folders and parts of the flat ones went to workers
    assert _subtree(repo, by_lanes.id, src) == _subtree(repo, by_threads.id, src)  # every tree, byte for byte
    for figure in ("files", "dirs", "bytes_total", "bytes_read", "errors_total"):
        assert by_lanes.stats[figure] == by_threads.stats[figure], figure
    rows = _cache_rows(tmp_path / "c2", src)
    assert rows == _cache_rows(tmp_path / "c1", src) and len(rows["folders"]) == 8  # the next backup's
    assert len(spills) == (4 if row_piece == 16 else 0)  # two flat folders, by threads then by lanes
    jobs.clear()
    again = backup_files(repo, [src], hostname="h", cache_dir=tmp_path / "c2")
    assert not jobs  # a cache with rows: the walk looks them up itself
    assert again.stats["files_unchanged"] == again.stats["files"] and again.stats["bytes_read"] == 0
    assert _subtree(repo, again.id, src) == _subtree(repo, by_threads.id, src)
    restore(repo, by_lanes.id, tmp_path / "out")
    assert _listing(restored(tmp_path / "out", src)) == _listing(src)
    assert check(repo, read_data=True).ok


def test_a_whole_machine_under_a_root_goes_to_the_lanes(
    repo: Repository, tmp_path: Path, jobs: list[str]
) -> None:
    """The machine's "/" as the source (its host folder given as ``root``): the pass over it names
    folders as the walk does, so they are handed over too."""
    machine = _tree(tmp_path / "machine")
    by_threads = backup_files(repo, ["/"], hostname="h", processes=False, root=machine)
    by_lanes = backup_files(repo, ["/"], hostname="h", root=machine)
    assert {"subtree", "part"} <= set(jobs) and by_lanes.tree == by_threads.tree
    assert by_lanes.stats["files"] == by_threads.stats["files"] > 120


@pytest.mark.parametrize(
    ("excludes", "includes"),
    [
        (["f1*", "*/a/b/c"], ["*f0*", "*n1", "inner"]),
        ([], ["*n1"]),
    ],  # the second leaves the flat folders empty
)
def test_lanes_apply_the_masks_as_the_walk_does(
    repo: Repository, tmp_path: Path, jobs: list[str], excludes: list[str], includes: list[str]
) -> None:
    src = _tree(tmp_path / "src")
    masks: dict[str, Any] = {"excludes": excludes, "includes": includes}
    by_threads = backup_files(repo, [src], hostname="h", processes=False, cache_dir=tmp_path / "c1", **masks)
    by_lanes = backup_files(repo, [src], hostname="h", cache_dir=tmp_path / "c2", **masks)
    assert "part" in jobs and _subtree(repo, by_lanes.id, src) == _subtree(repo, by_threads.id, src)
    assert by_lanes.stats["files"] == by_threads.stats["files"] < 60
    assert _cache_rows(tmp_path / "c2", src) == _cache_rows(tmp_path / "c1", src)


def test_a_folder_swapped_under_a_worker_is_named_and_backed_up_empty(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: list[str]
) -> None:
    """The worker opens a folder by its path: one renamed away and replaced since the walk stat'ed
    it is not read (another folder now), but named; the rest of the backup is whole."""
    src = _tree(tmp_path / "src")
    swapped = src / "a" / "b"
    real = lanes.Lanes.send

    def send(self: lanes.Lanes, lane: lanes.Lane, work: int, job: tuple[Any, ...], result: Any) -> bool:
        if job[0] == "subtree" and job[1] == str(swapped) and not (src / "moved").exists():
            swapped.rename(src / "moved")
            swapped.mkdir()
            (swapped / "other").write_text("not the folder the walk saw\n")
        return real(self, lane, work, job, result)

    monkeypatch.setattr(lanes.Lanes, "send", send)
    snap = backup_files(repo, [src], hostname="h")
    assert "subtree" in jobs
    errors = [(e["path"], e["error"]) for e in snap.stats["errors"]]
    assert errors == [
        (str(swapped), "cannot list (replaced while being backed up); backed up as an empty folder")
    ]
    restore(repo, snap.id, tmp_path / "out")
    out = restored(tmp_path / "out", src)
    assert (out / "a" / "b").is_dir() and not any((out / "a" / "b").iterdir())
    assert (out / "flat0" / "f09").read_bytes() == (src / "flat0" / "f09").read_bytes()


class Cancelled(Exception):
    pass


def test_cancel_with_lanes_commits_nothing_and_ends_the_workers(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: list[str]
) -> None:
    src = _tree(tmp_path / "src")
    first = backup_files(repo, [src / "a"], hostname="h", processes=False)
    started: list[procpool.ProcWorker] = []
    real_worker = procpool.ProcPool.relayed_worker

    def relayed_worker(self: procpool.ProcPool) -> procpool.ProcWorker | None:
        worker = real_worker(self)
        if worker is not None:
            started.append(worker)
        return worker

    def progress(_: Any) -> None:
        if len(jobs) >= 3:
            raise Cancelled

    real_go_on = archiver_module._Archiver.go_on

    def go_on(self: archiver_module._Archiver, path: str | None) -> bool:
        self.report(path, force=True)  # the progress callback, unthrottled, at each worker's question
        return real_go_on(self, path)

    monkeypatch.setattr(archiver_module._Archiver, "go_on", go_on)
    monkeypatch.setattr(procpool.ProcPool, "relayed_worker", relayed_worker)
    with pytest.raises(Cancelled):
        backup_files(repo, [src], hostname="h", progress=progress)
    assert started and all(worker.proc.returncode is not None for worker in started)
    assert [s.id for s in list_snapshots(repo)] == [first.id]
    assert check(repo).ok


def test_a_worker_killed_mid_run_fails_the_backup_and_the_rerun_is_whole(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: list[str]
) -> None:
    """kill -9 of a lane's worker (the OOM killer): the backup fails with the worker named, the
    last restore point stays, nothing half-stored is committed, and the rerun restores equal."""
    src = _tree(tmp_path / "src")
    first = backup_files(repo, [src / "a"], hostname="h", processes=False)
    real = lanes.Lanes.send

    def send(self: lanes.Lanes, lane: lanes.Lane, work: int, job: tuple[Any, ...], result: Any) -> bool:
        if len(jobs) == 4 and lane.worker is not None:
            os.kill(lane.worker.proc.pid, signal.SIGKILL)
            lane.worker.proc.wait()
        return real(self, lane, work, job, result)

    monkeypatch.setattr(lanes.Lanes, "send", send)
    with pytest.raises(procpool.WorkerLostError, match=r"killed by signal 9\)"):
        backup_files(repo, [src], hostname="h")
    assert [s.id for s in list_snapshots(repo)] == [first.id]
    assert check(repo, read_data=True).ok
    monkeypatch.setattr(lanes.Lanes, "send", real)
    rerun = backup_files(repo, [src], hostname="h")
    assert rerun.stats["errors_total"] == 0
    restore(repo, rerun.id, tmp_path / "out")
    assert _listing(restored(tmp_path / "out", src)) == _listing(src)


def test_lane_results_wait_for_the_filler_and_the_backup_is_the_same(
    repo: Repository, tmp_path: Path, jobs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most ``LANE_BACKLOG`` lane results wait for the filler thread (one here): the lanes'
    threads wait for room, and the backup still ends with the threads' own trees."""
    monkeypatch.setattr(filecontent, "LANE_BACKLOG", 1)
    most = [0]
    real = filecontent.FileContent.to_filler

    def counted(self: filecontent.FileContent, handle: Any, *args: Any) -> None:
        real(self, handle, *args)
        waiting = self.filler._work_queue.qsize()  # (the executor's own queue)
        most[0] = max(most[0], waiting)

    monkeypatch.setattr(filecontent.FileContent, "to_filler", counted)
    src = _tree(tmp_path / "src")
    by_threads = backup_files(repo, [src], hostname="h", processes=False, cache_dir=tmp_path / "c1")
    by_lanes = backup_files(repo, [src], hostname="h", cache_dir=tmp_path / "c2")
    assert {"subtree", "part"} <= set(jobs) and most[0] <= 1
    assert _subtree(repo, by_lanes.id, src) == _subtree(repo, by_threads.id, src)
    assert _cache_rows(tmp_path / "c2", src) == _cache_rows(tmp_path / "c1", src)


def test_a_lane_result_that_cannot_reach_the_filler_gives_its_room_back() -> None:
    """The filler already shut down (a failed backup): the result is refused, its room kept."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Semaphore
    from types import SimpleNamespace

    fake = SimpleNamespace(lane_backlog=Semaphore(1), filler=ThreadPoolExecutor(max_workers=1))
    fake.filler.shutdown()
    with pytest.raises(RuntimeError, match="shutdown"):
        filecontent.FileContent.to_filler(fake, print)  # type: ignore[arg-type]
    assert fake.lane_backlog.acquire(blocking=False)


def test_parts_that_come_out_of_order_give_the_same_tree(
    repo: Repository, tmp_path: Path, jobs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large folder's tree is fed its parts' texts in order as they come (``Folder._feed``): parts
    handed over last first are held until the ones before them come, and the tree is the same."""
    real = filecontent.FileContent.part_done
    held: dict[int, list[tuple[int, Any]]] = {}
    lock = threading.Lock()

    def reversed_parts(self: filecontent.FileContent, folder: Any, index: int, message: Any) -> None:
        with lock:
            waiting = held.setdefault(id(folder), [])
            waiting.append((index, message))
            if len(waiting) < len(folder.parts):
                return
            del held[id(folder)]
        for at, answer in sorted(waiting, key=lambda item: -item[0]):
            real(self, folder, at, answer)

    monkeypatch.setattr(filecontent.FileContent, "part_done", reversed_parts)
    src = _tree(tmp_path / "src")
    by_threads = backup_files(repo, [src], hostname="h", processes=False, cache_dir=tmp_path / "c1")
    by_lanes = backup_files(repo, [src], hostname="h", cache_dir=tmp_path / "c2")
    assert "part" in jobs and not held
    assert _subtree(repo, by_lanes.id, src) == _subtree(repo, by_threads.id, src)
    assert _cache_rows(tmp_path / "c2", src) == _cache_rows(tmp_path / "c1", src)
    restore(repo, by_lanes.id, tmp_path / "out")
    assert _listing(restored(tmp_path / "out", src)) == _listing(src)
