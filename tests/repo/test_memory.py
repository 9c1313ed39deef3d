"""The engine's memory helpers: heap tuning (few arenas, no helper process), recycled chunk copies."""

from __future__ import annotations

import platform
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cloudkeep.repo import Repository, backup_files, filecontent, restore, restorer
from cloudkeep.repo.memory import BufferPool
from cloudkeep.repo.runreader import Request, Segment
from tests.repo.conftest import restored


def test_heap_tuning_starts_no_process() -> None:
    """``find_library`` ran ``ldconfig -p``: a fork and exec on every backup an agent ran."""
    script = (
        "import resource\n"
        "from cloudkeep.heap import limit_heap_fragmentation\n"
        "limit_heap_fragmentation()\n"
        "limit_heap_fragmentation()\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "0", "a child process ran"


_ARENAS_SCRIPT = """
import ctypes, sys, threading
if sys.argv[1] == "limit":
    from cloudkeep.heap import limit_heap_fragmentation
    limit_heap_fragmentation()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
together = threading.Barrier(8)

def allocate() -> None:
    libc.free(libc.malloc(100_000))  # the thread's first allocation picks its arena
    together.wait()  # all alive at once: none can take over an ended thread's arena

threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc.malloc_stats()  # one "Arena N:" paragraph per arena, on stderr
"""


def _arenas(mode: str) -> int:
    command = [sys.executable, "-c", _ARENAS_SCRIPT, mode]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="arenas are glibc's")
def test_heap_tuning_keeps_threads_to_two_arenas() -> None:
    """Each arena keeps its own freed memory: eight threads had eight arenas, ~15 MiB more in a
    first backup's parent process."""
    assert _arenas("default") >= 8, "glibc no longer gives each new thread an arena: the test proves nothing"
    assert _arenas("limit") <= 2


def test_pool_copies_and_reuses_while_in_use() -> None:
    pool = BufferPool()
    first = random.Random(1).randbytes(700_000)
    with pool.using():
        buf, view = pool.copy(first)
        assert bytes(view) == first and len(buf) == 2**20  # rounded up to whole MiB
        pool.give_back(buf)
        second = b"x" * 900_000
        again, view = pool.copy(memoryview(second))
        assert again is buf and bytes(view) == second  # the same memory, the new content
        pool.give_back(again)
    later, _ = pool.copy(first)
    assert later is not buf, "idle buffers outlived their last user"


def test_pool_keeps_no_oversized_buffer() -> None:
    pool = BufferPool()
    with pool.using():
        big, view = pool.copy(bytes(BufferPool.KEEP_MAX + 1))
        assert len(view) == BufferPool.KEEP_MAX + 1
        pool.give_back(big)
        other, _ = pool.copy(b"small")
        assert other is not big


def test_pool_lends_each_buffer_to_one_thread_at_a_time() -> None:
    """Threads copying at once never share a buffer: each copy still holds its own bytes."""
    pool = BufferPool()
    errors: list[str] = []
    barrier = threading.Barrier(4)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        for _ in range(50):
            data = rng.randbytes(rng.randrange(1, 3 * 2**20))
            buf, view = pool.copy(data)
            if bytes(view) != data:
                errors.append(f"thread {seed}: copy differs")
            pool.give_back(buf)

    with pool.using():
        threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors


def test_large_file_chunks_through_recycled_copies_restore_exactly(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two large files on the chunk pool at once: every recycled chunk copy lands in its own blob."""
    monkeypatch.setattr(filecontent, "PARALLEL_FILE", 2**20)  # the test repository's chunks are small
    copied: list[bytearray] = []
    real = BufferPool.copy

    def counting(self: BufferPool, data: bytes | memoryview) -> tuple[bytearray, memoryview]:
        buf, view = real(self, data)
        copied.append(buf)
        return buf, view

    monkeypatch.setattr(BufferPool, "copy", counting)
    source = tmp_path / "src"
    source.mkdir()
    rng = random.Random(3)
    for name in ("a.bin", "b.bin"):
        (source / name).write_bytes(rng.randbytes(3 * 2**20) + b"text " * 200_000)
    snap = backup_files(repo, [source], threads=2)
    assert len({id(buf) for buf in copied}) < len(copied), "no chunk copy reused a buffer"
    restore(repo, snap.id, tmp_path / "out")
    out = restored(tmp_path / "out", source)
    for name in ("a.bin", "b.bin"):
        assert (out / name).read_bytes() == (source / name).read_bytes()


def test_a_restore_reads_its_data_without_the_tree_packs_it_planned_with(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning reads each tree once: the tree packs kept for it are let go before the data is read
    (a node tree's 55,000 entries kept 6 MiB of them beside a restore's data from S3)."""
    source = tmp_path / "src"
    for folder in ("a", "b/c"):
        (source / folder).mkdir(parents=True)
        for i in range(5):
            (source / folder / f"f{i}").write_bytes(f"{folder} {i}\n".encode() * 100)
    snap = backup_files(repo, [source])
    kept: list[int] = []
    real = restorer._Restorer._restore_segment

    def spy(self: restorer._Restorer, request: Request, segment: Segment, view: memoryview) -> None:
        kept.append(len(self.repo._pack_cache))
        real(self, request, segment, view)

    monkeypatch.setattr(restorer._Restorer, "_restore_segment", spy)
    restore(repo, snap.id, tmp_path / "out")
    assert kept and not any(kept), kept
    assert repo._pack_cache_bytes == 0
    assert (restored(tmp_path / "out", source) / "b" / "c" / "f4").read_bytes() == b"b/c 4\n" * 100
