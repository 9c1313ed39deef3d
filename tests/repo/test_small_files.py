"""Small files take a short path (read whole, no chunker): their chunks must
be exactly the chunker's, so the repository format and dedup against older backups are unchanged,
even for a file that grows between its stat and its read."""

from __future__ import annotations

import errno
import io
import os
import random
from pathlib import Path

import pytest

from cloudkeep.repo import Repository, backup_files, cat_file
from cloudkeep.repo import archiver as archiver_module
from cloudkeep.repo.browse import lookup
from cloudkeep.repo.chunker import StreamCutter


def _cat(repo: Repository, snapshot_id: str, path: Path) -> bytes:
    out = io.BytesIO()
    cat_file(repo, snapshot_id, str(path), out)
    return out.getvalue()


def _chunk_ids(repo: Repository, data: bytes) -> list[bytes]:
    """What the chunker makes of ``data``: the ids a backup must record."""
    cutter = StreamCutter(repo.config.chunker)
    return [repo.crypter.content_id(bytes(c)) for c in cutter.cut(io.BytesIO(data))]


def test_files_around_the_minimum_chunk_match_the_chunker(repo: Repository, tmp_path: Path) -> None:
    low = repo.config.chunker.min_size
    sizes = [1, 100, 4096, low - 1, low, low + 1, 5 * low]
    rng = random.Random(3)
    src = tmp_path / "src"
    src.mkdir()
    contents = {f"f{size}": rng.randbytes(size) for size in sizes}
    for name, data in contents.items():
        (src / name).write_bytes(data)
    snap = backup_files(repo, [src], hostname="h")
    assert snap.stats["bytes_read"] == sum(sizes)
    for name, data in contents.items():
        node = lookup(repo, snap.id, str(src / name))
        assert node.content == _chunk_ids(repo, data), name
        assert node.size == len(data)
        assert _cat(repo, snap.id, src / name) == data


def test_a_small_file_that_grew_since_its_stat_is_chunked_whole(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk's stat sees 10 bytes; by the time the file is read it holds several minimum chunks."""
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(4).randbytes(2 * repo.config.chunker.max_size + 123)
    (src / "growing").write_bytes(data[:10])
    real_stat = os.stat

    def stat_then_grow(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        st = real_stat(name, *args, **kwargs)
        if name == "growing":
            (src / "growing").write_bytes(data)  # an application writes right after the walk looked
        return st

    monkeypatch.setattr(archiver_module.os, "stat", stat_then_grow)
    snap = backup_files(repo, [src], hostname="h")
    monkeypatch.undo()
    node = lookup(repo, snap.id, str(src / "growing"))
    assert node.content == _chunk_ids(repo, data) and len(node.content) > 1
    assert _cat(repo, snap.id, src / "growing") == data


def test_open_ahead_gives_each_file_its_descriptor_or_its_own_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch opened ahead: every non-empty regular file is advised whole, a missing file or a
    symlink (``O_NOFOLLOW``) is that file's error, a FIFO (which refuses the advice) is still
    opened without blocking, to read as empty, and a full descriptor table leaves the file to be
    opened when it is read."""
    from cloudkeep.repo.chunker import open_ahead
    from cloudkeep.repo.fsmeta import FILE_FLAGS

    (tmp_path / "a").write_bytes(b"x" * 5000)
    (tmp_path / "empty").write_bytes(b"")
    os.symlink("a", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    advised: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def advise(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_WILLNEED
        advised.append((offset, length))
        real(fd, offset, length, advice)

    real_open = os.open

    def open_(name: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if name == "busy":  # the process's descriptor table is full as this one is opened
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(name, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "posix_fadvise", advise)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    monkeypatch.setattr(os, "open", open_)
    try:
        names = [("a", 5000), ("missing", 10), ("link", 5000), ("fifo", 100), ("empty", 0), ("busy", 5000)]
        opened = open_ahead([(name, dir_fd, size) for name, size in names], FILE_FLAGS)
    finally:
        monkeypatch.setattr(os, "open", real_open)
        os.close(dir_fd)
    try:
        a, missing, link, fifo, empty, busy = opened
        assert isinstance(a, int) and os.read(a, 10000) == b"x" * 5000
        assert isinstance(missing, FileNotFoundError)
        assert isinstance(link, OSError) and link.errno == errno.ELOOP
        assert isinstance(fifo, int) and os.read(fifo, 10) == b""
        assert isinstance(empty, int)
        assert busy is None  # opened when it is read, not failed
        assert advised == [(0, 5000), (0, 100)]  # the FIFO's refused; nothing asked for an empty file
    finally:
        for fd in opened:
            if isinstance(fd, int):
                os.close(fd)
