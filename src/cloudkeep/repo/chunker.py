"""Content-defined chunking parameters (FastCDC 2020 via ``pyfastcdc``).

Defaults for new repositories: minimum 128 KiB, target 512 KiB (the real mean is ≈ 560 KiB at
normalization level 3, ≈ 640 KiB at level 1), maximum 8 MiB. Why: an edit to a large file (a
database page, an appended log) re-uploads only the chunks around it, and half-size chunks halve
that; on real trees they
also dedup more of the files between 128 and 256 KiB. A 1 TiB repository still has under two
million index entries (tens of MB of RAM). Smaller still would multiply index size, per-blob
overhead and request counts. Repositories created with other parameters (the earlier 256 KiB /
1 MiB / 8 MiB) keep them: they are stored in each repository's config, and changing them would
re-upload everything. Each repository has its own random gear-table seed, so chunk boundaries
(and hence sizes) do not reveal known files.

New repositories chunk at FastCDC's normalization level 3 (repositories created before keep level 1,
which their config does not name): the same mean, far fewer chunks near the 8 MiB maximum. An edit
lands in a chunk with odds in proportion to its size, so a long tail of big chunks is what an
incremental re-uploads: on the bench's database (40 rewritten pages, usr corpus), level 1 re-stored
8.4-9.9 MB per day depending on the seed, level 3 6.3-7.1 MB, for ~0.5 % more bytes in the first backup.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

from pyfastcdc import FastCDC

from cloudkeep.errors import IntegrityError
from cloudkeep.storage.base import RangeStream, read_exactly

MIN_SIZE = 128 * 1024
AVG_SIZE = 512 * 1024
MAX_SIZE = 8 * 1024 * 1024
BUFFER_CHUNKS = 4  # a cutter's buffer, in average chunks (StreamCutter)
KEEP_LARGE_FILES = 16  # files a grown buffer is kept for after the last that needed it
NORMALIZATION = 3  # new repositories' FastCDC normalization level
LEGACY_NORMALIZATION = 1  # what a config without the field was chunked with (pyfastcdc's default)


@dataclass(frozen=True)
class ChunkerParams:
    min_size: int = MIN_SIZE
    avg_size: int = AVG_SIZE
    max_size: int = MAX_SIZE
    seed: int = 0
    normalization: int = NORMALIZATION

    def __post_init__(self) -> None:
        if self.normalization not in (0, 1, 2, 3):
            raise IntegrityError(f"chunker normalization level {self.normalization} is not 0-3")

    def make(self) -> FastCDC:
        """A new chunker; FastCDC instances are not thread-safe, so each worker makes its own."""
        return FastCDC(
            avg_size=self.avg_size,
            min_size=self.min_size,
            max_size=self.max_size,
            normalized_chunking=cast("Literal[0, 1, 2, 3]", self.normalization),  # checked at init
            seed=self.seed,
        )

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "algorithm": "fastcdc2020",
            "min": self.min_size,
            "avg": self.avg_size,
            "max": self.max_size,
            "seed": self.seed,
        }
        if self.normalization != LEGACY_NORMALIZATION:  # an older config reseals to the same JSON
            body["normalization"] = self.normalization
        return body

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChunkerParams:
        """Parameters from a repository config: anything but whole numbers is refused, not coerced
        (``int()`` would take ``true``, ``3.9`` or ``"3"`` and chunk a repository differently)."""
        return cls(
            _whole(data, "min"),
            _whole(data, "avg"),
            _whole(data, "max"),
            _whole(data, "seed"),
            _whole(data, "normalization", LEGACY_NORMALIZATION),
        )


def _whole(data: dict[str, Any], name: str, default: int | None = None) -> int:
    value = data.get(name, default)
    if type(value) is not int:  # bool is an int subclass: refused too
        raise IntegrityError(f"repository config: chunker {name} must be a whole number, not {value!r}")
    return value


class StreamCutter:
    """Cuts files into content-defined chunks through one reusable buffer (one per thread).

    pyfastcdc's own stream chunker allocates a fresh buffer of twice the maximum chunk per file
    and copies its tail on every refill; over thousands of files that allocation churn was a
    large share of a backup's kernel time. Here the buffer lives as long as the thread. A chunk
    found in the buffer is final when its cut lies before the buffer's end (FastCDC never looks
    past a cut point), when it has the maximum length, or at end of file; otherwise its bytes
    move to the front and more of the file is read, so the chunks are exactly those of the
    whole file in one piece.

    The buffer holds ``BUFFER_CHUNKS`` average chunks, not a maximum one: every byte of it is
    resident per reading thread and worker process once a large file was read (8 MiB each at the
    default maximum, where chunks rarely pass 2 MiB). A chunk that fills it from the front is
    not final yet, so the buffer grows to the maximum (a run of zeros is cut at the maximum). It
    stays that large while files need it and is small again after ``KEEP_LARGE_FILES`` that did
    not: a fresh 8 MiB per file costs its page faults again, which made a tree of files with
    zero runs 2.5 times slower to back up.
    """

    def __init__(self, params: ChunkerParams) -> None:
        self.cdc = params.make()
        self.max_size = params.max_size
        self.small = min(params.max_size, BUFFER_CHUNKS * params.avg_size)
        self.buffer = bytearray(self.small)
        self.unneeded = 0  # files cut since a chunk last needed the large buffer

    def cut(self, fh: RangeStream) -> Iterator[memoryview]:
        """Chunks of ``fh`` from its current position; each is valid only until the next one."""
        if len(self.buffer) > self.small:
            self.unneeded += 1
            if self.unneeded > KEEP_LARGE_FILES:  # the last file's views are gone: let it go
                self.buffer = bytearray(self.small)
        view = memoryview(self.buffer)
        have, eof = 0, False
        while True:
            if not eof:
                have += len(read_exactly(fh, view[have:]))
                eof = have < len(view)
            start = 0
            for chunk in self.cdc.cut_buf(view[:have]):
                end = chunk.offset + chunk.length
                if not (eof or end < have or chunk.length >= self.max_size):
                    break  # may still grow with the bytes after the buffer
                if chunk.length >= self.small:  # would not have fit the small buffer
                    self.unneeded = 0
                yield chunk.data
                start = end
            if eof and start == have:
                return
            if start == 0:  # one chunk fills the buffer and may grow further: room for a maximum one
                assert len(view) < self.max_size  # (a full maximum-size buffer always holds a final chunk)
                self.buffer = bytearray(self.max_size)
                self.buffer[:have] = view[:have]
                view = memoryview(self.buffer)
                self.unneeded = 0
                continue
            view[: have - start] = view[start:have]
            have -= start


def read_small(fd: int, size: int, limit: int) -> bytes | None:
    """The content of a file whose stat said ``size`` < ``limit`` (the minimum chunk: one chunk),
    or None when it has grown to ``limit`` since (chunk it from the start then).

    One plain read asks for a byte more than ``size``: a regular file reads short only at its
    end, so that read sees the end too (no second read, and GIL hand-off, per file to see it),
    with no chunker buffer and no file object. A FIFO swapped in reads as empty, never blocks
    (the descriptor is ``O_NONBLOCK``)."""
    parts: list[bytes] = []
    total, want = 0, size + 1
    while total < limit:
        try:
            part = os.read(fd, want)
        except BlockingIOError:
            break
        if not part:
            break
        parts.append(part)
        total += len(part)
        if len(part) < want:
            break
        want = 64 * 1024
    if total >= limit:
        return None
    return parts[0] if len(parts) == 1 else b"".join(parts)


def open_ahead(files: list[tuple[str, int | None, int]], flags: int) -> list[int | OSError | None]:
    """Open a batch of small files, ``(name, dir_fd, size)`` each, and ask the kernel for all their
    content at once: a descriptor per file, or the error its open raised, or None when the process
    is out of descriptors (then the file is opened when it is read, as without a batch: a full
    descriptor table is not that file's fault).

    Read one after another from a cold page cache, each small file waited for its own disk read
    (one I/O in flight per reader, where a disk or a cloud volume serves many at once): reading
    40,000 maildir messages cold took 4.0 s, and 1.4-1.6 s with each batch's reads asked for
    first (bench/README.md, stop 38). From a warm cache the hint costs one syscall that finds
    the pages there. Only files below the minimum chunk come here (the hint asks for the whole
    file); a large file is read ahead by the kernel as it is read."""
    advise = getattr(os, "posix_fadvise", None)  # Linux; elsewhere the files are just opened
    opened: list[int | OSError | None] = []
    for name, dir_fd, size in files:
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError as exc:
            opened.append(None if exc.errno in (errno.EMFILE, errno.ENFILE) else exc)
            continue
        opened.append(fd)
        if size and advise is not None:
            with contextlib.suppress(OSError):  # not a regular file now (a FIFO swapped in): read as it is
                advise(fd, 0, size, os.POSIX_FADV_WILLNEED)
    return opened


def close_opened(opened: list[int | OSError | None]) -> None:
    """Close the descriptors ``open_ahead`` gave (its batch owns them until it ends)."""
    for fd in opened:
        if isinstance(fd, int):
            os.close(fd)
