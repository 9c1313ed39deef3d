"""Restore's worker process: the same files as the threads write, and its failures are the restore's.

The whole restore runs for real (a local repository, the worker a real process on a real target);
failures are real too: the worker killed with SIGKILL, a damaged blob, a tmpfs that fills up, a
name taken by a folder. ``test_restore_metadata``, ``_adversarial`` and ``_target`` also run every
test with the worker (``restore_worker`` in conftest).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import stat
import threading
from pathlib import Path

import pytest

from cloudkeep.errors import InsufficientSpaceError, IntegrityError
from cloudkeep.repo import Repository, backup_files, procpool, restore, restoreproc, restorer
from cloudkeep.repo.pack import pack_key
from cloudkeep.repo.procpool import WorkerLostError
from cloudkeep.repo.restorefiles import RestoredFile, Target, TargetWriter
from cloudkeep.repo.restoreproc import RestoreProc
from cloudkeep.repo.runreader import plan_requests
from cloudkeep.repo.targetfs import PRIVATE, TargetDirs
from cloudkeep.storage import open_store
from tests.repo.conftest import FAST_KDF, PASSWORD, RESTORE_THREADS, SMALL_CHUNKS, restored
from tests.support.tmpfs import Tmpfs

KIB, MIB = 1024, 2**20


@pytest.fixture
def local_repo(tmp_path: Path) -> Repository:
    store = open_store(f"file://{tmp_path / 'repo'}")
    return Repository.create(store, PASSWORD, pack_size=256 * KIB, kdf=FAST_KDF, chunker=SMALL_CHUNKS)


def _tree(root: Path, files: int = 300) -> Path:
    """Small files in nested folders, a multi-chunk file, a sparse one, hard links, xattrs, modes."""
    rng = random.Random(3)
    for i in range(files):
        folder = root / f"d{i % 7}" / f"e{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"f{i}"
        path.write_bytes(rng.randbytes(rng.randrange(0, 6000)))
        os.chmod(path, (0o644, 0o600, 0o755, 0o444)[i % 4])
        os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_500_000_000_000_000_000 + i * 1000))
    (root / "big.bin").write_bytes(rng.randbytes(2 * MIB))
    with open(root / "sparse.img", "wb") as fh:
        fh.write(rng.randbytes(3000))
        fh.seek(MIB)
        fh.write(b"tail")
    (root / "linked-a").write_bytes(b"one chunk, two names\n")
    os.link(root / "linked-a", root / "d0" / "linked-b")
    os.setxattr(root / "d1" / "e1" / "f1", "user.note", b"kept")
    return root


def _same(a: Path, b: Path) -> None:
    """The same files with the same content, mode, mtime, link count and user xattrs."""
    names = 0
    for dirpath, _, files in os.walk(a):
        for name in files:
            path = Path(dirpath) / name
            other = b / path.relative_to(a)
            one, two = os.lstat(path), os.lstat(other)
            assert other.read_bytes() == path.read_bytes(), path
            assert (two.st_mode, two.st_mtime_ns, two.st_nlink) == (
                one.st_mode,
                one.st_mtime_ns,
                one.st_nlink,
            ), path
            assert {k: os.getxattr(other, k) for k in os.listxattr(other)} == {
                k: os.getxattr(path, k) for k in os.listxattr(path) if k.startswith("user.")
            }, path
            names += 1
    assert names > 300


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Segments the worker was sent, counted (its ``handle`` wrapped)."""
    sent: list[int] = []
    handle = RestoreProc.handle

    def counted(self: RestoreProc, *args: object) -> None:
        sent.append(1)
        handle(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(RestoreProc, "handle", counted)
    return sent


def _leaves(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each ``RunReader.leave_general`` a restore makes, in order (the method wrapped)."""
    left: list[bool] = []
    leave = restorer.RunReader.leave_general

    def recorded(self: restorer.RunReader, value: bool) -> None:
        left.append(value)
        leave(self, value)

    monkeypatch.setattr(restorer.RunReader, "leave_general", recorded)
    return left


def _leaves_of_a_restore(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, remote: bool = False
) -> list[bool]:
    """900 small files restored with the worker from the first file on (from a "remote" local
    folder if asked), checked whole; each ``RunReader.leave_general`` the restore made, in order."""
    src = _tree(tmp_path / "src", files=900)
    snap = backup_files(repo, [src], hostname="h")
    if remote:  # the remote path (reader threads, one batch, dense packs) over a local folder
        monkeypatch.setattr(repo.store, "remote", True)
    monkeypatch.setattr(restorer, "RESTORE_PROCS", 1)
    monkeypatch.setattr(restorer, "PROC_FILES", 0)
    left = _leaves(monkeypatch)
    sent = _counting(monkeypatch)
    result = restore(repo, snap.id, tmp_path / "out")
    assert result.ok, result.errors
    assert sent  # the worker took part
    _same(src, restored(tmp_path / "out", src))
    return left


def test_the_worker_restores_what_the_threads_restore(
    local_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _tree(tmp_path / "src", files=1500)  # ~20 packs of small files: the worker gets some
    snap = backup_files(local_repo, [src], hostname="h")
    monkeypatch.setattr(restorer, "RESTORE_PROCS", 0)
    threads = restore(local_repo, snap.id, tmp_path / "threads")
    monkeypatch.setattr(restorer, "RESTORE_PROCS", 1)
    monkeypatch.setattr(restorer, "PROC_FILES", 0)
    sent = _counting(monkeypatch)
    worker = restore(local_repo, snap.id, tmp_path / "worker")
    assert sent  # the worker took part (its taker waits on the line before the first request)
    assert worker.ok and threads.ok, (worker.errors, threads.errors)
    assert (worker.files, worker.bytes, worker.verified) == (threads.files, threads.bytes, threads.verified)
    _same(src, restored(tmp_path / "worker", src))
    _same(restored(tmp_path / "threads", src), restored(tmp_path / "worker", src))


def test_the_worker_boots_while_the_plan_is_still_made(
    local_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planned as a remote store's restore is (one batch, handed out when planning ends), the
    worker starts as the plan reaches ``PROC_FILES`` files, not at that hand-out: its interpreter
    boots while the rest is planned, and it still takes part."""
    src = _tree(tmp_path / "src", files=600)
    snap = backup_files(local_repo, [src], hostname="h")
    monkeypatch.setattr(restorer, "RESTORE_PROCS", 1)
    monkeypatch.setattr(restorer, "PROC_FILES", 100)
    monkeypatch.setattr(restorer._Restorer, "batch_full", lambda self: False)
    at_start: list[tuple[int, int]] = []  # (files planned, batches handed out) as it starts

    def started(writer: restorer._Restorer, *args: object) -> RestoreProc:
        at_start.append((writer.result.files, len(writer.batches)))
        return RestoreProc(writer, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(restorer, "RestoreProc", started)
    sent = _counting(monkeypatch)
    result = restore(local_repo, snap.id, tmp_path / "out")
    assert result.ok, result.errors
    assert at_start == [(100, 0)] and result.files > 100
    assert sent  # it restored some of the files
    _same(src, restored(tmp_path / "out", src))


def test_a_plan_waiting_for_room_takes_small_files_back_from_the_worker(
    local_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While planning, small files are left to the worker (``LEAVE_GENERAL``); a plan that waits
    for room (``PLAN_AHEAD`` targets unwritten) lets this process's decoder take them again, and
    leaves them after; the end of planning takes them back for good. The restore ends whole."""
    monkeypatch.setattr(restorer, "PLAN_AHEAD", 16)
    left = _leaves_of_a_restore(local_repo, tmp_path, monkeypatch)
    assert left[0] is True and left[-1] is False  # left once it started, taken back at the end
    assert left.count(False) > 1  # and while the plan waited


def test_a_remote_plan_leaves_small_files_to_the_worker_until_it_ends(
    local_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a remote store (one batch, dense packs handed out while planning) the small files of
    what is handed out while planning go to the worker alone, until planning ends."""
    assert _leaves_of_a_restore(local_repo, tmp_path, monkeypatch, remote=True) == [True, False]


def test_named_files_take_small_files_back_from_a_worker_started_after_planning(
    local_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore of named files plans none of them in ``plan_tree``: its worker starts with the
    last hand-out, once planning is over, and small files are not left to it from then on."""
    src = _tree(tmp_path / "src", files=120)
    snap = backup_files(local_repo, [src], hostname="h")
    named = sorted(str(path) for path in src.glob("d*/e*/f*"))
    monkeypatch.setattr(restorer, "RESTORE_PROCS", 1)
    monkeypatch.setattr(restorer, "PROC_FILES", 0)
    left = _leaves(monkeypatch)
    result = restore(local_repo, snap.id, tmp_path / "out", paths=named)
    assert result.ok and result.files == len(named) == 120, result.errors
    assert left == [True, False]  # left as the worker started, taken back at once
    for name in named:
        assert (tmp_path / "out" / name.lstrip("/")).read_bytes() == Path(name).read_bytes()


def test_a_small_restore_starts_no_worker(
    local_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(restorer.PROC_FILES // 2):
        (src / f"f{i}").write_bytes(b"x" * i)
    snap = backup_files(local_repo, [src], hostname="h")
    sent = _counting(monkeypatch)
    assert restore(local_repo, snap.id, tmp_path / "out").ok
    assert not sent


def test_a_worker_killed_mid_restore_fails_the_restore_clearly(
    local_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _tree(tmp_path / "src", files=600)
    snap = backup_files(local_repo, [src], hostname="h")
    monkeypatch.setattr(restorer, "PROC_FILES", 0)
    monkeypatch.setattr(restorer, "RESTORE_PROCS", 1)
    killed: list[int] = []
    handle = RestoreProc.handle

    def kill_first(self: RestoreProc, *args: object) -> None:  # the worker dies as data flows to it
        if not killed:
            os.kill(self.proc.pid, signal.SIGKILL)
            killed.append(self.proc.wait())
        handle(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(RestoreProc, "handle", kill_first)
    with pytest.raises(WorkerLostError, match=r"restore worker process \(pid \d+\) .*killed by signal 9"):
        restore(local_repo, snap.id, tmp_path / "out")
    assert killed == [-signal.SIGKILL]
    assert not [
        t.name for t in threading.enumerate() if t.name.startswith(RESTORE_THREADS)
    ]  # none left waiting
    monkeypatch.setattr(RestoreProc, "handle", handle)
    again = restore(local_repo, snap.id, tmp_path / "again")  # nothing of the repository was touched
    assert again.ok
    _same(src, restored(tmp_path / "again", src))


def test_a_worker_that_never_starts_fails_the_restore_instead_of_hanging_it(
    local_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker stuck before it says "ready" (its taker may already be blocked writing a segment
    into its full pipe) is killed past the start timeout: the restore fails with that error."""
    src = _tree(tmp_path / "src", files=600)
    snap = backup_files(local_repo, [src], hostname="h")
    monkeypatch.setattr(restorer, "PROC_FILES", 0)
    monkeypatch.setattr(restorer, "RESTORE_PROCS", 1)
    monkeypatch.setattr(procpool, "_BOOT", "import time; time.sleep(600)")  # never reads a segment
    monkeypatch.setattr(procpool, "START_TIMEOUT_S", 0.3)
    late = r"restore worker process \(pid \d+\) did not start within 0.3 s"
    with pytest.raises(WorkerLostError, match=late):  # whether or not it was given segments yet
        restore(local_repo, snap.id, tmp_path / "out")
    assert not [t.name for t in threading.enumerate() if t.name.startswith(RESTORE_THREADS)]
    monkeypatch.undo()
    again = restore(local_repo, snap.id, tmp_path / "again")
    assert again.ok
    _same(src, restored(tmp_path / "again", src))


def test_a_full_target_stops_a_restore_in_the_worker(
    local_repo: Repository, tmp_path: Path, tmpfs: Tmpfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(9)
    for i in range(800):  # ~6 MiB of small files into a 4 MiB file system
        (src / f"f{i}").write_bytes(rng.randbytes(8000))
    snap = backup_files(local_repo, [src], hostname="h")
    monkeypatch.setattr(restorer, "PROC_FILES", 0)
    monkeypatch.setattr(restorer, "RESTORE_PROCS", 1)
    sent = _counting(monkeypatch)
    with pytest.raises(InsufficientSpaceError, match="no space left"):
        restore(local_repo, snap.id, tmpfs.path / "out")
    assert sent


def _one_file_segment(repo: Repository, tmp_path: Path, content: bytes) -> tuple[object, object, bytearray]:
    """A backed-up one-chunk file's request, segment and bytes, read from the repository."""
    src = tmp_path / "one"
    src.mkdir()
    (src / "f").write_bytes(content)
    snap = backup_files(repo, [src], hostname="h")
    tree = repo.load_tree(bytes.fromhex(snap.tree))
    for part in src.parts[1:]:
        node = next(n for n in tree if n.name == part)
        assert node.subtree is not None
        tree = repo.load_tree(node.subtree)
    (node,) = tree
    (blob_id,) = node.content
    (request,) = plan_requests([repo.locate(blob_id)], remote=False)
    (segment,) = request.segments
    data = bytearray(
        repo.store.get_range(pack_key(request.pack_id), segment.start, segment.end - segment.start)
    )
    return request, segment, data


def _writer(target: Path) -> TargetWriter:
    target.mkdir()
    return TargetWriter(TargetDirs(os.open(target, os.O_RDONLY | os.O_DIRECTORY)))


def test_a_damaged_blob_in_the_worker_is_an_integrity_error(local_repo: Repository, tmp_path: Path) -> None:
    request, segment, data = _one_file_segment(local_repo, tmp_path, os.urandom(5000))
    data[-20] ^= 1  # inside the blob's sealed bytes (its tag)
    writer = _writer(tmp_path / "out")
    file = RestoredFile(0, "f", "", 5000, False, True, mode=PRIVATE)
    failures: list[BaseException] = []
    blob = segment.entries[0].id  # type: ignore[attr-defined]
    proc = RestoreProc(
        writer,
        local_repo,
        [{blob: [Target(file, 0)]}],
        lambda n: None,
        lambda batch, n: None,
        failures.append,
    )
    try:
        proc.handle(request, segment, memoryview(data))  # type: ignore[arg-type]
        with pytest.raises(IntegrityError, match=f"in pack {request.pack_id}"):  # type: ignore[attr-defined]
            proc.finish()
    finally:
        proc.kill()
        writer.dirs.close()
    assert len(failures) == 1 and isinstance(failures[0], IntegrityError)
    assert not (tmp_path / "out" / "f").exists() or (tmp_path / "out" / "f").stat().st_size == 0


def test_a_file_the_worker_cannot_create_is_the_parent_s_error(
    local_repo: Repository, tmp_path: Path
) -> None:
    request, segment, data = _one_file_segment(local_repo, tmp_path, b"fine content\n" * 100)
    writer = _writer(tmp_path / "out")
    (tmp_path / "out" / "taken").mkdir()  # the name is a folder now: O_CREAT | O_EXCL fails
    blocked = RestoredFile(0, "taken", "", 1300, False, True, mode=PRIVATE)
    fine = RestoredFile(0, "fine", "", 1300, False, True, linked=True, mode=PRIVATE)
    written: list[int] = []
    settled: list[tuple[int, int]] = []
    blob = segment.entries[0].id  # type: ignore[attr-defined]
    batches = [{blob: [Target(blocked, 0), Target(fine, 0)]}]
    proc = RestoreProc(
        writer,
        local_repo,
        batches,
        written.append,
        lambda batch, count: settled.append((batch, count)),
        lambda exc: pytest.fail(str(exc)),
    )
    try:
        proc.handle(request, segment, memoryview(data))  # type: ignore[arg-type]
        proc.finish()
    finally:
        proc.kill()
        writer.dirs.close()
    assert blocked.failed and not fine.failed and writer.failed_files == 1
    assert writer.result.errors == ["/taken: a folder of that name is in the way"]
    assert (tmp_path / "out" / "fine").read_bytes() == b"fine content\n" * 100
    st = os.stat(tmp_path / "out" / "fine")
    assert fine.identity == (st.st_dev, st.st_ino)  # linked to later: the parent knows it again
    assert stat.S_IMODE(st.st_mode) == PRIVATE and written == [2 * 1300]
    assert settled == [(0, 2)]  # both targets, the failed one too: the planner's room counts them


def test_a_worker_that_cannot_start_leaves_the_restore_to_the_threads(
    local_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    src = _tree(tmp_path / "src")
    snap = backup_files(local_repo, [src], hostname="h")
    monkeypatch.setattr(restorer, "PROC_FILES", 0)
    monkeypatch.setattr(restorer, "RESTORE_PROCS", 1)

    def no_processes(*_: object, **__: object) -> None:  # as where process creation is refused
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(restoreproc, "spawn", no_processes)
    result = restore(local_repo, snap.id, tmp_path / "out")
    assert result.ok, result.errors
    _same(src, restored(tmp_path / "out", src))
    assert "without a worker process" in caplog.text
