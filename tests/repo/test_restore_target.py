"""How restore writes its target: holes stay holes, paths past PATH_MAX, bounded folder descriptors."""

from __future__ import annotations

import hashlib
import inspect
import os
import random
import stat
import sys
import threading
from pathlib import Path

import pytest

from cloudkeep.repo import Repository, backup_files, list_tree, restore, targetfs
from cloudkeep.repo.targetfs import TargetDirs, data_runs
from cloudkeep.storage import ObjectStore
from tests.repo.conftest import FAST_KDF, PASSWORD, restored
from tests.support.hostile import Crafter, craft, fifo, file, folder, symlink

# Every test twice: on threads alone, and with the worker process writing too (conftest).
pytestmark = pytest.mark.usefixtures("restore_worker")

MIB = 2**20


def _digest(path: Path) -> str:
    h = hashlib.blake2b()
    with path.open("rb") as fh:
        while block := fh.read(4 * MIB):
            h.update(block)
    return h.hexdigest()


def test_sparse_file_with_data_at_both_ends_restores_as_holes(store: ObjectStore, tmp_path: Path) -> None:
    """The default chunker (8 MiB maximum): chunks at the ends hold a little data and many zeros."""
    repo = Repository.create(store, PASSWORD, kdf=FAST_KDF)
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "disk.img", "wb") as fh:
        fh.write(random.Random(3).randbytes(12 * 1024))
        fh.seek(64 * MIB - 12 * 1024)
        fh.write(random.Random(4).randbytes(12 * 1024))
    snap = backup_files(repo, [src], hostname="h")
    restore(repo, snap.id, tmp_path / "out")
    out = restored(tmp_path / "out", src) / "disk.img"
    assert out.stat().st_size == 64 * MIB and _digest(out) == _digest(src / "disk.img")
    assert out.stat().st_blocks * 512 <= 256 * 1024  # was 16 MiB: both end chunks written whole


@pytest.mark.parametrize("as_view", [False, True])
def test_data_runs_skip_whole_zero_blocks(as_view: bool) -> None:
    chunk = bytearray(5 * 4096)
    chunk[10] = 1  # in the first (partial) block when the chunk starts 100 bytes into a block
    chunk[3 * 4096 + 5] = 2
    data: bytes | memoryview = memoryview(bytes(chunk)) if as_view else bytes(chunk)
    # lands at file offset 100: file blocks start at chunk positions 3996, 8092, 12188, 16284
    assert data_runs(data, 100) == [(0, 3996), (12188, 16284)]
    assert data_runs(data, 0) == [(0, 4096), (12288, 16384)]
    zeros = bytes(3 * 4096)
    assert data_runs(memoryview(zeros) if as_view else zeros, 7) == []


def test_paths_longer_than_path_max_restore(repo: Repository, tmp_path: Path) -> None:
    depth, name = 30, "d" * 200  # ~6 KiB below the target: no path string could name the file
    spec = file("leaf.txt", b"deep\n")
    for _ in range(depth):
        spec = folder(name, [spec])
    snapshot_id = craft(repo, [spec])
    target = tmp_path / "out"
    result = restore(repo, snapshot_id, target)
    assert result.ok and result.files == 1 and result.dirs == depth, result.errors
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        leaf = os.open("leaf.txt", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
        try:
            assert os.read(leaf, 100) == b"deep\n"
            assert os.fstat(leaf).st_mtime_ns == 1_600_000_000_000_000_000
        finally:
            os.close(leaf)
    finally:
        os.close(fd)


def test_folder_descriptors_stay_bounded_and_right(tmp_path: Path) -> None:
    """Eight threads ask for 60 folders through an LRU of 4: each gets its own folder, always."""
    root = tmp_path / "t"
    paths = {0: root}
    root.mkdir()
    dirs = TargetDirs(os.open(root, os.O_RDONLY | os.O_DIRECTORY), limit=4)
    for i in range(1, 61):
        parent = random.Random(i).randrange(i)
        (paths[parent] / f"n{i}").mkdir()
        paths[i] = paths[parent] / f"n{i}"
        assert dirs.add(parent, f"n{i}") == i
    problems: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            index = rng.randrange(61)
            with dirs.at(index) as fd:
                if os.fstat(fd).st_ino != os.stat(paths[index]).st_ino:
                    problems.append(f"{index} got another folder")
            if len(dirs._open) > 4 + 8 * 62:  # pinned chains may overshoot while in use, never grow
                problems.append("descriptors grew")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with dirs.at(0):  # the next use trims what pinned chains left open
        pass
    assert problems == [] and len(dirs._open) <= 4
    assert dirs.path(60).endswith("/n60")
    dirs.close()


def test_eviction_passes_over_pinned_folders_and_closes_the_oldest_other(tmp_path: Path) -> None:
    """Folders pinned at the old end of the order stay open (the count may overshoot while they
    are in use); the oldest unpinned one is closed; once released, the next use trims to the limit."""
    dirs = TargetDirs(os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY), limit=3)
    for i in range(1, 6):
        (tmp_path / f"d{i}").mkdir()
        assert dirs.add(0, f"d{i}") == i
    first, second = dirs.acquire(1), dirs.acquire(2)
    with dirs.at(3):
        pass
    with dirs.at(4):
        pass
    assert sorted(dirs._open) == [0, 1, 2, 4]  # 3, the oldest not pinned, closed
    for index, fd in ((1, first), (2, second)):
        assert os.fstat(fd).st_ino == os.stat(tmp_path / f"d{index}").st_ino
    dirs.release(1)
    dirs.release(2)
    with dirs.at(5):
        pass
    assert len(dirs._open) == 3 and 0 in dirs._open and 5 in dirs._open
    dirs.close()


def test_restore_through_a_tiny_descriptor_cache(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(targetfs, "OPEN_DIRS", 2)
    specs = [folder(f"f{i}", [folder("sub", [file(f"x{j}", f"{i}-{j}\n".encode()) for j in range(3)])])
             for i in range(12)]  # fmt: skip
    result = restore(repo, craft(repo, specs), tmp_path / "out")
    assert result.ok and result.files == 36
    for i in range(12):
        for j in range(3):
            assert (tmp_path / "out" / f"f{i}" / "sub" / f"x{j}").read_text() == f"{i}-{j}\n"


def test_in_place_keeps_an_identical_link_and_replaces_others(repo: Repository, tmp_path: Path) -> None:
    """Never a moment without ``/bin -> usr/bin`` when it already points where it should."""
    target = tmp_path / "root"
    target.mkdir()
    os.symlink("usr/bin", target / "bin")
    os.symlink("elsewhere", target / "lib")
    (target / "fifo").write_text("a file where the restore point has a fifo\n")
    same = os.lstat(target / "bin").st_ino
    specs = [symlink("bin", "usr/bin"), symlink("lib", "usr/lib"), fifo("fifo")]
    result = restore(repo, craft(repo, specs), target)
    assert result.ok, result.errors
    assert os.lstat(target / "bin").st_ino == same and os.readlink(target / "lib") == "usr/lib"
    assert stat.S_ISFIFO(os.lstat(target / "fifo").st_mode)


def test_a_deep_chain_reopens_without_recursion(tmp_path: Path) -> None:
    """Reopening the deepest of 400 evicted folders walks up and down iteratively, whatever the
    recursion limit (set here to 100 frames above this test's own depth)."""
    dirs = TargetDirs(os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY), limit=2)
    index = 0
    for _ in range(400):
        with dirs.at(index) as fd:
            os.mkdir("d", dir_fd=fd)
        index = dirs.add(index, "d")
    os.mkdir(tmp_path / "e")
    with dirs.at(dirs.add(0, "e")):  # with the target itself, fills the cache: the chain is evicted
        pass
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 100)
    try:
        with dirs.at(index) as fd:
            os.mkdir("leaf", dir_fd=fd)
    finally:
        sys.setrecursionlimit(previous)
    dirs.close()
    assert (tmp_path / "/".join(["d"] * 400) / "leaf").is_dir()


def test_browsing_a_deep_restore_point_needs_no_recursion(repo: Repository) -> None:
    crafter = Crafter(repo)  # bottom up: the helper's own nesting would recurse
    subtree = crafter.tree([file("leaf.txt")])
    for _ in range(1499):
        subtree = crafter.tree([{"name": "d", "type": "dir", "subtree": subtree}])
    snapshot_id = crafter.snapshot([{"name": "d", "type": "dir", "subtree": subtree}])
    entries = list(list_tree(repo, snapshot_id, "/", recursive=True))
    assert len(entries) == 1501 and entries[-1].path == "/d" * 1500 + "/leaf.txt"


@pytest.mark.parametrize("chunks", [1, 3])
@pytest.mark.parametrize("partial", [False, True])
def test_a_file_that_cannot_be_written_is_named_by_its_full_path(
    store: ObjectStore, tmp_path: Path, chunks: int, partial: bool
) -> None:
    """Planning keeps no path per file (memory): a failure still names the file's whole path."""
    from cloudkeep.repo.chunker import ChunkerParams

    params = ChunkerParams(64 * 1024, 128 * 1024, 256 * 1024)
    repo = Repository.create(store, PASSWORD, kdf=FAST_KDF, chunker=params)
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f.bin").write_bytes(random.Random(5).randbytes(chunks * 256 * 1024 - 1))
    (src / "a" / "ok.txt").write_text("restored\n")
    snap = backup_files(repo, [src], hostname="h")
    target = tmp_path / "out"
    blocker = restored(target, src) / "a" / "b" / "f.bin"
    blocker.mkdir(parents=True)  # a folder holding something where the file goes
    (blocker / "keep").write_text("not ours\n")
    result = restore(repo, snap.id, target, paths=[str(src / "a")] if partial else None)
    assert len(result.errors) == 1 and result.errors[0].startswith(f"{src}/a/b/f.bin: "), result.errors
    assert (restored(target, src) / "a" / "ok.txt").read_text() == "restored\n"
    assert (blocker / "keep").read_text() == "not ours\n"
