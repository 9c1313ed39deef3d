"""Restore on many threads at once: the same tree as on one thread, and no escape under concurrency.

Restore creates files, symbolic links and FIFOs, writes shared chunks into many files and applies
metadata on a pool of threads (``restorer.LOCAL_THREADS`` for local stores). These tests force
one thread and many threads on a real local repository (``file://``) and compare everything a
restore must keep: bytes, modes, times, link targets, hard links, holes.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import stat
from pathlib import Path
from typing import Any

import pytest

from cloudkeep.errors import IntegrityError
from cloudkeep.repo import Repository, backup_files, restore, restoreproc, restorer, tree
from cloudkeep.repo.browse import lookup
from cloudkeep.repo.pack import pack_key
from cloudkeep.repo.tree import FILE, Node
from cloudkeep.storage import open_store
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, restored
from tests.support.hostile import craft, fifo, file, folder, sandbox, symlink

MIB = 2**20
SHARED = b"the same bytes in many files\n" * 40  # one blob, written into every file that holds it


def _build(root: Path, seed: int) -> None:
    """Many small files in many folders, plus every kind of entry a restore treats specially."""
    rng = random.Random(seed)
    for d in range(24):
        folder_path = root / f"d{d:02}" / "sub"
        folder_path.mkdir(parents=True)
        for f in range(12):
            path = folder_path / f"f{f:02}"
            path.write_bytes(SHARED if f % 4 == 0 else rng.randbytes(rng.randrange(0, 6000)))
            os.chmod(path, rng.choice([0o600, 0o644, 0o640, 0o755, 0o700, 0o444]))
            mtime = 1_600_000_000_000_000_000 + f * 10**9 + d
            os.utime(path, ns=(1_500_000_000_000_000_000 + d * 10**9, mtime))
        os.symlink(f"f{d % 12:02}", folder_path / "link")  # relative, inside
        os.symlink("../../../../../outside", folder_path / "dangling")  # never followed
        os.mkfifo(folder_path / "pipe", 0o640)
        os.link(folder_path / "f01", root / f"hard{d:02}")  # hard links across folders
    with open(root / "sparse.img", "wb") as fh:
        fh.write(rng.randbytes(5000))
        fh.seek(3 * MIB)
        fh.write(rng.randbytes(5000))
    (root / "big.bin").write_bytes(rng.randbytes(2 * MIB))  # many chunks, several packs
    for d in range(24):  # folder times last: creating entries changed them
        os.utime(root / f"d{d:02}" / "sub", ns=(1_400_000_000_000_000_000, 1_400_000_000_000_000_000 + d))


def _state(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything restore must reproduce, per path below ``root`` (hard links by shared inode)."""
    found: dict[str, tuple[Any, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            body: Any = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    body = hashlib.blake2b(fh.read()).hexdigest()
                if st.st_nlink > 1:
                    body = (body, inodes.setdefault(st.st_ino, rel))  # the first name of its inode
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            mtime = None if stat.S_ISLNK(st.st_mode) else st.st_mtime_ns
            found[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, mtime, body)
    return found


@pytest.fixture
def local_repo(tmp_path: Path) -> Repository:
    store = open_store(f"file://{tmp_path / 'repo'}")
    return Repository.create(store, PASSWORD, pack_size=256 * 1024, kdf=FAST_KDF, chunker=SMALL_CHUNKS)


def test_many_threads_restore_the_same_tree_as_one(
    local_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    _build(src, seed=18)
    snap = backup_files(local_repo, [src], hostname="h")
    states = []
    for threads in (1, 12):
        monkeypatch.setattr(restorer, "LOCAL_THREADS", threads)
        target = tmp_path / f"out{threads}"
        result = restore(local_repo, snap.id, target)
        assert result.ok and result.verified == result.files, result.errors
        out = restored(target, src)
        states.append(_state(out))
        assert (out / "sparse.img").stat().st_blocks * 512 <= 256 * 1024  # holes stayed holes
        assert os.path.samestat(os.stat(out / "hard00"), os.stat(out / "d00" / "sub" / "f01"))
    expected = _state(src)
    assert states[0] == expected
    assert states[1] == expected
    assert len(expected) > 24 * 16  # the walk saw the whole tree


def test_hostile_links_are_refused_alike_on_many_threads(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Links to outside beside entries of the same name, in many folders restored at once."""
    monkeypatch.setattr(restorer, "LOCAL_THREADS", 12)
    outside, target, state = sandbox(tmp_path)
    specs = []
    for d in range(30):
        specs.append(
            folder(
                f"d{d:02}",
                [
                    symlink("s", f"{outside}/victim.txt"),
                    file("s", b"overwritten\n", mode=0o777),
                    symlink("t", f"{outside}/victim-dir"),
                    folder("t", [file("planted")]),
                    fifo("p"),
                    file("good", f"fine {d}\n".encode()),
                ],
            )
        )
    snapshot_id = craft(repo, specs)
    before = state()
    result = restore(repo, snapshot_id, target)
    assert state() == before, "the restore changed something outside its target"
    for d in range(30):
        assert (target / f"d{d:02}" / "good").read_bytes() == f"fine {d}\n".encode()
        assert os.readlink(target / f"d{d:02}" / "s") == f"{outside}/victim.txt"  # the first of the name
        assert stat.S_ISFIFO(os.lstat(target / f"d{d:02}" / "p").st_mode)
        for name in ("s", "t"):
            assert any(f"/d{d:02}/{name}: refused" in error for error in result.errors), result.errors
    assert len(result.errors) == 60 and not result.ok


@pytest.fixture
def tiny_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The plan handed to the readers every 3 files (or 4 KiB): dozens of batches in flight."""
    monkeypatch.setattr(restorer, "BATCH_FILES", 3)
    monkeypatch.setattr(restorer, "BATCH_BYTES", 4096)
    monkeypatch.setattr(restorer, "BATCH_GROWTH_CAP", 2)
    monkeypatch.setattr(restorer, "REMOTE_BATCH_SCALE", 1)
    monkeypatch.setattr(restorer, "PLAN_AHEAD", 6)  # planning waits for the readers again and again
    handed: list[int] = []
    original = restorer._Restorer.hand_out

    def counting(self: restorer._Restorer) -> None:
        handed.append(len(self.by_blob))
        original(self)

    monkeypatch.setattr(restorer._Restorer, "hand_out", counting)
    return handed


@pytest.mark.parametrize("remote", [False, True])
def test_a_plan_in_many_batches_restores_the_same_tree(
    local_repo: Repository,
    tmp_path: Path,
    tiny_batches: list[int],
    remote: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fetching starts while planning goes on: a blob shared by files of different batches is
    written into all of them, files of several chunks and hard links across batches stay whole."""
    src = tmp_path / "src"
    _build(src, seed=19)
    snap = backup_files(local_repo, [src], hostname="h")
    monkeypatch.setattr(local_repo.store, "remote", remote)  # reader threads, streamed ranges
    result = restore(local_repo, snap.id, tmp_path / "out")
    assert result.ok and result.verified == result.files, result.errors
    assert len([n for n in tiny_batches if n]) > 30  # really many batches, most with blobs
    out = restored(tmp_path / "out", src)
    assert _state(out) == _state(src)
    assert os.path.samestat(os.stat(out / "hard07"), os.stat(out / "d07" / "sub" / "f01"))


def test_a_missing_pack_stops_a_plan_in_batches(
    local_repo: Repository, tmp_path: Path, tiny_batches: list[int]
) -> None:
    """A reader's failure is the restore's error, whether planning still goes on or not."""
    src = tmp_path / "src"
    _build(src, seed=20)
    snap = backup_files(local_repo, [src], hostname="h")
    big = lookup(local_repo, snap.id, f"{src}/big.bin")
    pack_id = local_repo.locate(big.content[-1]).pack_id
    os.unlink(tmp_path / "repo" / pack_key(pack_id))
    with pytest.raises(IntegrityError, match="missing from storage"):
        restore(local_repo, snap.id, tmp_path / "out")


@pytest.mark.parametrize("worker", [False, True])
def test_planning_keeps_only_a_bounded_plan_ahead_of_the_writes(
    local_repo: Repository,
    tmp_path: Path,
    tiny_batches: list[int],
    worker: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The planner waits while ``PLAN_AHEAD`` targets are unwritten; every batch's plan is let go
    once written, by the threads and by the worker process alike; written one-chunk files hold no
    node; the planned folders' trees are not kept in the repository's tree cache. Unbounded, a
    restore of 55,000 small files held every node and plan to its end (bench/README.md, stop 42)."""
    monkeypatch.setattr(restorer, "RESTORE_PROCS", 1 if worker else 0)
    monkeypatch.setattr(restorer, "PROC_FILES", 0)
    src = tmp_path / "src"
    _build(src, seed=21)
    snap = backup_files(local_repo, [src], hostname="h")
    local_repo._tree_cache.clear()
    local_repo._tree_cache_nodes = 0
    resumed: list[int] = []  # targets unwritten when planning went on after a wait
    waited = [0]
    kept: list[tuple[list[int], list[int]]] = []  # (plan sizes, unwritten) per batch, at the end
    left_with_meta: list[str] = []
    wait, drop = restorer._Restorer.wait_for_room, restorer._Restorer.drop_plan
    write = restorer.TargetWriter.write

    def waiting(self: restorer._Restorer) -> None:
        waited[0] += self.unwritten_total > restorer.PLAN_AHEAD
        wait(self)
        resumed.append(self.unwritten_total)

    def dropping(self: restorer._Restorer) -> None:
        kept.append(([len(batch) for batch in self.batches], list(self.unwritten)))
        drop(self)

    def writing(self: restorer.TargetWriter, target: Any, data: Any, runs: Any) -> None:
        write(self, target, data, runs)
        if target.file.single and not target.file.failed and target.file.meta is not None:
            left_with_meta.append(target.file.name)

    sent: list[Any] = []  # files whose blobs went to the worker process
    spec = restoreproc._spec

    def specifying(file: Any) -> tuple[Any, ...]:
        sent.append(file)
        return spec(file)

    monkeypatch.setattr(restorer._Restorer, "wait_for_room", waiting)
    monkeypatch.setattr(restorer._Restorer, "drop_plan", dropping)
    monkeypatch.setattr(restorer.TargetWriter, "write", writing)
    monkeypatch.setattr(restoreproc, "_spec", specifying)
    result = restore(local_repo, snap.id, tmp_path / "out")
    assert result.ok and result.verified == result.files, result.errors
    assert _state(restored(tmp_path / "out", src)) == _state(src)
    assert waited[0] > 5  # the planner was ahead, and waited
    assert max(resumed) <= restorer.PLAN_AHEAD
    ((sizes, unwritten),) = kept
    assert len(sizes) > 30 and set(sizes) == {0} and set(unwritten) == {0}  # every batch written, let go
    assert not left_with_meta
    assert bool(sent) == worker and all(file.meta is None for file in sent if file.single)
    assert local_repo._tree_cache_nodes < 30  # at most the folders the look-up of "/" passed


def test_a_remote_plan_holds_no_node_of_a_one_chunk_file(
    local_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote store's restore plans every file before its one batch is read: what it keeps of a
    one-chunk file until it is written is its ``FileMeta``, not its node (~350 bytes a file more:
    bench/README.md, stop 43). Folders and files of several chunks keep theirs (metadata last)."""
    src = tmp_path / "src"
    _build(src, seed=23)
    snap = backup_files(local_repo, [src], hostname="h")
    local_repo._tree_cache.clear()
    local_repo._tree_cache_nodes = 0
    monkeypatch.setattr(local_repo.store, "remote", True)
    alive: list[int] = []
    planned: list[int] = []
    fetch = restorer._Restorer.fetch_rest

    def fetching(self: restorer._Restorer) -> None:
        gc.collect()
        single = [
            o for o in gc.get_objects() if isinstance(o, Node) and o.type == FILE and len(o.content) == 1
        ]
        alive.append(len(single))
        planned.append(sum(len(targets) for targets in self.by_blob.values()))
        fetch(self)

    monkeypatch.setattr(restorer._Restorer, "fetch_rest", fetching)
    result = restore(local_repo, snap.id, tmp_path / "out")
    assert result.ok and result.verified == result.files, result.errors
    assert _state(restored(tmp_path / "out", src)) == _state(src)
    assert planned[0] > 250  # the whole plan was there, unread: one batch
    assert alive == [0]


def test_a_remote_plan_hands_out_each_pack_it_needs_and_has_left(
    local_repo: Repository, tmp_path: Path, restore_worker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a remote store, a pack the plan needs (nearly) all of and has moved past goes to the
    readers while planning goes on, in one request of its own: one that holds a file deleted since
    (a blob the restore point no longer needs) too; the tree is the same."""
    monkeypatch.setattr(restorer, "IDLE_BYTES", 64 * 1024)
    monkeypatch.setattr(restorer, "LOOK_BYTES", 1)  # look after every file
    src = tmp_path / "src"
    _build(src, seed=24)
    backup_files(local_repo, [src], hostname="h")
    for d in range(24):  # a day later: a file of each folder deleted
        max((src / f"d{d:02}" / "sub").glob("f0[5-7]"), key=os.path.getsize).unlink()
    snap = backup_files(local_repo, [src], hostname="h")
    monkeypatch.setattr(local_repo.store, "remote", True)
    queued = _queued(monkeypatch)
    result = restore(local_repo, snap.id, tmp_path / "out")
    assert result.ok and result.verified == result.files, result.errors
    assert _state(restored(tmp_path / "out", src)) == _state(src)
    early = [(plan, requests) for during, plan, requests in queued if during]
    assert len(early) >= 5 and len(queued) == len(early) + 1  # the last batch at the end
    assert all(len(requests) == 1 for _, requests in early), "each pack in one request"
    stale = [
        plan
        for plan, (request,) in early
        if set(plan) < {entry.id for entry in local_repo.index.entries_of(request.pack_id)}
    ]
    assert stale, "no pack holding a deleted file went out while planning"


def test_a_blob_needed_after_its_pack_went_out_is_read_again(
    local_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packs handed out whatever share of them is planned: the blob every folder holds goes out
    with the first folders' pack and is looked up and read again for the folders after."""
    monkeypatch.setattr(restorer, "IDLE_BYTES", 16 * 1024)
    monkeypatch.setattr(restorer, "LOOK_BYTES", 1)
    monkeypatch.setattr(restorer, "DENSE", 0)
    src = tmp_path / "src"
    _build(src, seed=25)
    snap = backup_files(local_repo, [src], hostname="h")
    shared_blob = lookup(local_repo, snap.id, f"{src}/d00/sub/f00").content[0]
    monkeypatch.setattr(local_repo.store, "remote", True)
    queued = _queued(monkeypatch)
    result = restore(local_repo, snap.id, tmp_path / "out")
    assert result.ok and result.verified == result.files, result.errors
    assert _state(restored(tmp_path / "out", src)) == _state(src)
    assert sum(shared_blob in plan for _, plan, _ in queued) >= 2


def test_a_look_for_dense_packs_passes_over_those_left_long_ago(
    local_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack left and not dense is looked at once, then not again until the plan needs it again:
    each look costs the packs needed lately, not all the packs of a large restore so far."""
    monkeypatch.setattr(restorer, "IDLE_BYTES", 16 * 1024)
    monkeypatch.setattr(restorer, "LOOK_BYTES", 1)
    monkeypatch.setattr(restorer, "DENSE", 2)  # none is ever dense enough
    src = tmp_path / "src"
    _build(src, seed=26)
    snap = backup_files(local_repo, [src], hostname="h")
    monkeypatch.setattr(local_repo.store, "remote", True)
    looks: list[tuple[int, int]] = []  # (packs planned in part, packs still looked at) after each look
    look = restorer._Restorer._hand_out_dense

    def looking(self: restorer._Restorer, parts: dict[str, Any]) -> None:
        look(self, parts)
        looks.append((len(parts), len(self.active)))

    monkeypatch.setattr(restorer._Restorer, "_hand_out_dense", looking)
    result = restore(local_repo, snap.id, tmp_path / "out")
    assert result.ok and _state(restored(tmp_path / "out", src)) == _state(src)
    assert max(parts for parts, _ in looks) >= 8
    # Looks at a third of the packs planned in part at most, in all (~1/6 here; how many a look
    # passes over at once depends on how the backup's two workers filled the packs: 4-7 of 10).
    assert 3 * sum(active for _, active in looks) <= sum(parts for parts, _ in looks), looks


def _queued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, dict[bytes, Any], list[Any]]]:
    """Every batch a restore hands out: (while planning, its plan, its requests)."""
    queued: list[tuple[bool, dict[bytes, Any], list[Any]]] = []
    planning = [True]
    queue_batch, fetch_rest = restorer._Restorer._queue, restorer._Restorer.fetch_rest

    def queueing(self: restorer._Restorer, batch: Any, targets: int, requests: list[Any]) -> None:
        queued.append((planning[0], dict(batch), list(requests)))
        queue_batch(self, batch, targets, requests)

    def fetching(self: restorer._Restorer) -> None:
        planning[0] = False
        fetch_rest(self)

    monkeypatch.setattr(restorer._Restorer, "_queue", queueing)
    monkeypatch.setattr(restorer._Restorer, "fetch_rest", fetching)
    return queued


def test_a_large_folder_is_planned_without_all_its_nodes_at_once(
    local_repo: Repository, tmp_path: Path, tiny_batches: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large folder's listing is read a node at a time (``tree.STREAM_TREE``): while planning
    waits for room, the nodes of the folder's files not yet planned are not made yet, and those
    planned are gone (a one-chunk file keeps its ``FileMeta``). Read whole, a maildir folder of
    48,000 messages held its blob, its text and every node at once (bench/README.md, stop 43)."""
    monkeypatch.setattr(tree, "STREAM_TREE", 0)
    src = tmp_path / "src" / "cur"
    src.mkdir(parents=True)
    for i in range(300):
        (src / f"{i:03}.mail").write_bytes(f"message {i}\n".encode() * 3)
    snap = backup_files(local_repo, [tmp_path / "src"], hostname="h")
    local_repo._tree_cache.clear()
    local_repo._tree_cache_nodes = 0
    alive: list[int] = []
    wait = restorer._Restorer.wait_for_room

    def waiting(self: restorer._Restorer) -> None:
        gc.collect()
        alive.append(sum(1 for o in gc.get_objects() if isinstance(o, Node) and o.type == FILE))
        wait(self)

    monkeypatch.setattr(restorer._Restorer, "wait_for_room", waiting)
    result = restore(local_repo, snap.id, tmp_path / "out")
    assert result.ok and result.files == 300, result.errors
    out = restored(tmp_path / "out", tmp_path / "src") / "cur"
    assert all((out / p.name).read_bytes() == p.read_bytes() for p in src.iterdir())
    assert len(alive) > 20 and max(alive) <= 2, alive


def test_a_worker_lost_while_the_planner_waits_fails_the_restore(
    local_repo: Repository, tmp_path: Path, tiny_batches: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The readers stop on a failure and no target is written again: a planner that waits for room
    sees the failure (it does not wait forever) and the restore raises it."""
    monkeypatch.setattr(restorer, "RESTORE_PROCS", 0)
    src = tmp_path / "src"
    _build(src, seed=22)
    snap = backup_files(local_repo, [src], hostname="h")
    segments = [0]
    original = restorer._Restorer._restore_segment

    def failing(self: restorer._Restorer, request: Any, segment: Any, view: memoryview) -> None:
        segments[0] += 1
        if segments[0] == 4:
            raise OSError(28, "No space left on device")
        original(self, request, segment, view)

    monkeypatch.setattr(restorer._Restorer, "_restore_segment", failing)
    with pytest.raises(OSError, match="No space left"):
        restore(local_repo, snap.id, tmp_path / "out")
