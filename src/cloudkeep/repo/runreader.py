"""Restore's data path: each pack's needed blobs read as few coalesced ranges, decoded in parallel.

Reading blob by blob costs a system call (or a stream read in Python) per blob: most of a
restore's blobs are small files' single chunks. Instead the needed blobs of a pack, sorted by
offset, are merged into **segments** — one read into one buffer — while the gap between
neighbours is small (reading a few unneeded bytes beats another call) and the segment stays under
a cap (memory). Neighbouring segments of a pack form one **request**: locally every segment is its
own read (cheap, and several threads share a pack), on a remote store one ranged GET streams all
of a pack's segments, so request count stays one per pack range.

Reader threads fill buffers taken from a fixed pool and queue them; decoder threads decrypt,
decompress, verify and write the blobs, then give the buffer back. The pool's size bounds the
memory of reads in flight whatever the restore's size (one buffer per thread: every reader and
decoder holds at most one at a time); readers wait for a free buffer. Locally
there are no reader threads: each decoder reads its own segments (a page-cache copy is not worth
a hand-off between threads). With ``bulk`` given, the decoders past the first ``general`` take
only bulk requests (chunks of large files: decoded with the GIL released, so two decoders gain)
and leave requests of many small blobs (a few short system calls each, GIL hand-offs around every
one) to the general ones, which take those first: locally a sorting thread puts the plan's
requests into the two lines, remotely the readers put what they read.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cloudkeep.compat import SLOTS
from cloudkeep.errors import IntegrityError
from cloudkeep.repo.index import Location
from cloudkeep.repo.pack import BlobEntry, pack_key
from cloudkeep.storage.base import ObjectNotFoundError, ObjectStore, RangeStream, read_exactly

SEGMENT_GAP = 64 * 1024  # unneeded bytes read (and dropped) rather than split a segment
REQUEST_GAP = 2**20  # remote: longer unneeded stretches end the request (not downloaded)
# Bytes per segment (one buffer), locally and remotely; a larger blob is a segment of its own.
# Remotely one ranged GET streams all of a request's segments, so the size costs no requests:
# 512 KiB there restored the synthetic tree from S3 (moto) in 2.02 s against 1.75 s with 1 MiB,
# whose peak RSS was lower too (93 against 99 MiB), usr equal (bench/README.md, stop 33): a
# worker process takes half the segments, and each costs it a round trip.
SEGMENT_CAP = 2**20


@dataclass(**SLOTS)
class Segment:
    """Needed blobs of one pack lying close together, read into one buffer: ``[start, end)``."""

    start: int
    end: int
    entries: list[BlobEntry] = field(default_factory=list)
    raw: int = 0  # the entries' raw lengths summed (which line a request goes to: ``Bulk``)


@dataclass(**SLOTS)
class Request:
    """Segments of one pack read through one ``open_range`` call, in order."""

    pack_id: str
    segments: list[Segment]
    batch: int = 0  # which part of a plan given in parts it belongs to (the handler's to interpret)

    @property
    def start(self) -> int:
        return self.segments[0].start

    @property
    def end(self) -> int:
        return self.segments[-1].end


def plan_segments(
    entries: list[BlobEntry], *, gap: int = SEGMENT_GAP, cap: int = SEGMENT_CAP
) -> list[Segment]:
    """One pack's needed blobs as segments, by offset (``entries`` is sorted in place)."""
    entries.sort(key=lambda e: e.offset)
    segments: list[Segment] = []
    current: Segment | None = None
    for entry in entries:
        end = entry.offset + entry.length
        if current is None or entry.offset - current.end > gap or end - current.start > cap:
            current = Segment(entry.offset, end)
            segments.append(current)
        current.entries.append(entry)
        current.end = max(current.end, end)
        current.raw += entry.raw_length
    if segments and segments[0].start <= gap and segments[0].end <= cap:
        segments[0].start = 0  # read the pack's prelude with it (format 3: the pack's wrapped data key)
    return segments


def plan_requests(
    locations: Iterable[Location],
    *,
    remote: bool,
    gap: int = SEGMENT_GAP,
    cap: int = SEGMENT_CAP,
    request_gap: int = REQUEST_GAP,
    batch: int = 0,
) -> list[Request]:
    """Reads covering every located blob once: per segment locally, per pack range remotely.

    Remote requests go largest first, so no long download starts last and runs alone at the end;
    local ones stay in pack order (sequential on a disk, every segment about the same size).
    """
    by_pack: dict[str, list[BlobEntry]] = defaultdict(list)
    for loc in locations:
        by_pack[loc.pack_id].append(loc.entry)
    requests: list[Request] = []
    for pack_id, entries in by_pack.items():
        segments = plan_segments(entries, gap=gap, cap=cap)
        if not remote:
            requests.extend(Request(pack_id, [segment], batch) for segment in segments)
            continue
        group: list[Segment] = []
        for segment in segments:
            if group and segment.start - group[-1].end > request_gap:
                requests.append(Request(pack_id, group, batch))
                group = []
            group.append(segment)
        requests.append(Request(pack_id, group, batch))
    if remote:
        requests.sort(key=lambda r: r.start - r.end)
    return requests


Handler = Callable[[Request, Segment, memoryview], None]
Bulk = Callable[[Request], bool]
Item = TypeVar("Item")


class _Stop(Exception):
    """Another thread failed: this one stops reading."""


class RunReader:
    """Reads ``requests`` from ``store`` on ``readers`` threads; ``handle`` runs on ``decoders`` threads.

    ``handle(request, segment, view)`` gets the segment's bytes (shorter than the segment only
    where the pack ends early: the decoder's length check names it). The first exception of any
    thread stops the others and is raised by ``run`` (or ``join``).
    """

    def __init__(
        self,
        store: ObjectStore,
        handle: Handler,
        *,
        readers: int,
        decoders: int,
        cap: int = SEGMENT_CAP,
        bulk: Bulk | None = None,
        general: int = 1,
        delegates: int = 0,
    ):
        self.store, self.handle = store, handle
        self.readers, self.decoders, self.cap = max(0, readers), max(1, decoders), cap
        self.bulk, self.general = bulk, max(1, general)
        self.delegates, self._delegated = delegates, 0
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        # The memory bound: a thread holds one buffer at a time (a reader fills one and queues it,
        # a decoder handles one and gives it back), so this many never makes a thread wait for
        # memory another thread does not give back; more only queues more read-ahead.
        self._buffers = threading.BoundedSemaphore(self.decoders + self.readers + delegates)
        self._work: _Lines[tuple[Request, Segment, bytearray, int]] = _Lines()  # read, for the decoders
        self._lock = threading.Lock()
        self._next_lock = threading.Lock()  # held while the requests' iterator blocks: not ``_lock``
        self._error: BaseException | None = None
        self._readers: list[threading.Thread] = []
        self._decoders: list[threading.Thread] = []
        self._general_line: Iterator[Request] | None = None  # locally: what general takers read
        self._shared: _Lines[Any] = self._work  # the lines general takers and delegates share

    @property
    def error(self) -> BaseException | None:
        """The first failure of any thread so far (``join`` raises it)."""
        return self._error

    def run(self, requests: Iterable[Request]) -> None:
        """Read and handle every request (``start`` then ``join``)."""
        self.start(requests)
        self.join()

    def start(self, requests: Iterable[Request]) -> None:
        """Start reading ``requests``, which may block for more (a plan still being made); once per
        reader (``join`` closes its lines).

        ``readers=0``: each decoder reads its own segments. A local read is a copy from the page
        cache, a hundredth of decoding and writing what it read: there a hand-off between threads
        costs more (GIL and futex traffic) than it saves.
        """
        pending = iter(requests)
        self._general_line = pending
        if not self.readers and self._split:
            sorted_: _Lines[Request] = _Lines()
            self._general_line = _SharedLine(sorted_)
            self._shared = sorted_
            lines = [sorted_.take(general=general) for general in self._general()]
            sort = threading.Thread(target=self._sort, args=(pending, sorted_), name="ck-restore-sort")
            self._readers = [sort] + [
                threading.Thread(target=self._read_all, args=(line, True, False), name=f"ck-restore-{i}")
                for i, line in enumerate(lines)
            ]
        elif not self.readers:
            self._readers = [
                threading.Thread(target=self._read_all, args=(pending, True), name=f"ck-restore-{i}")
                for i in range(self.decoders)
            ]
        else:
            self._readers = [
                threading.Thread(target=self._read_all, args=(pending, False), name=f"ck-read-{i}")
                for i in range(self.readers)
            ]
            self._decoders = [
                threading.Thread(target=self._decode_all, args=(general,), name=f"ck-decode-{i}")
                for i, general in enumerate(self._general())
            ]
        for thread in self._readers + self._decoders:
            thread.start()

    def add_taker(self, handle: Handler) -> None:
        """One more taker of general work (after ``start``, before ``join``; at most ``delegates``),
        whose segments go to ``handle`` instead: restore's worker process (``restoreproc``)."""
        if self._delegated >= self.delegates or self._general_line is None:
            raise ValueError("no room for another taker")
        self._delegated += 1
        name = f"ck-restore-delegate-{self._delegated}"
        if self.readers:
            thread = threading.Thread(target=self._decode_all, args=(True, handle), name=name)
            self._decoders.append(thread)
        else:
            line, shared = self._general_line, not isinstance(self._general_line, _SharedLine)
            thread = threading.Thread(target=self._read_all, args=(line, True, shared, handle), name=name)
            self._readers.append(thread)
        thread.start()

    def leave_general(self, left: bool) -> None:
        """Whether this process's general takers leave small work to the delegates (``add_taker``:
        a worker process on a core and GIL of its own) and take only bulk work, while something
        else here needs the GIL: a restore's planning. Without a delegate, or without a bulk line
        (no decoder of bulk only: every item is small), nothing changes."""
        self._shared.leave_general(left and self._delegated > 0 and self._split)

    def join(self) -> None:
        """Wait until every request is handled (the iterator ended) or a thread failed; raise that."""
        for thread in self._readers:
            thread.join()
        self._work.close()
        for thread in self._decoders:
            thread.join()
        if self._error is not None:
            raise self._error

    @property
    def _split(self) -> bool:
        """Whether bulk work goes to a line of its own (some decoders take only that)."""
        return self.bulk is not None and self.decoders > self.general

    def _general(self) -> list[bool]:
        """Per decoder, whether it takes every kind of work (else only the bulk line)."""
        return [not self._split or i < self.general for i in range(self.decoders)]

    def fail(self, exc: BaseException) -> None:
        """Stop every thread; ``join`` raises ``exc`` (unless another failure came first)."""
        with self._lock:
            if self._error is None:
                self._error = exc

    def _take_buffer(self, size: int) -> bytearray:
        self._buffers.acquire()  # decoders give every buffer back, even after a failure
        if self._error is not None:
            self._buffers.release()
            raise _Stop
        try:
            buf = self._free.get_nowait()
        except queue.Empty:
            buf = bytearray(max(size, self.cap))
        if len(buf) < size:  # a blob larger than the cap: a buffer of its own, for this blob only
            self._free.put(buf)
            buf = bytearray(size)
        return buf

    def _give_back(self, buf: bytearray) -> None:
        if len(buf) <= self.cap:  # one grown for a large blob is dropped: the pool stays at its size
            self._free.put(buf)
        self._buffers.release()

    def _read_all(
        self, pending: Iterator[Request], inline: bool, shared: bool = True, handle: Handler | None = None
    ) -> None:
        """Read (and, ``inline``, handle) requests from ``pending``: shared by every such thread, or
        this thread's own line of a ``_Lines`` (which waits inside for its kind: no lock held)."""
        lock = self._next_lock if shared else contextlib.nullcontext()
        try:
            while self._error is None:
                with lock:
                    request = next(pending, None)
                if request is None:
                    return
                self._read(request, inline, handle)
        except _Stop:
            pass
        except BaseException as exc:  # handed to run(), which raises it
            self.fail(exc)

    def _read(self, request: Request, inline: bool, handle: Handler | None = None) -> None:
        start, end = request.start, request.end
        bulk = not inline and self._is_bulk(request)  # once per request: the reads are its segments
        try:
            with self.store.open_range(pack_key(request.pack_id), start, end - start) as stream:
                position = start
                for segment in request.segments:
                    _skip(stream, segment.start - position, self)
                    size = segment.end - segment.start
                    buf = self._take_buffer(size)
                    try:
                        got = len(read_exactly(stream, memoryview(buf)[:size]))
                    except BaseException:
                        self._give_back(buf)
                        raise
                    if inline:
                        self._handle(request, segment, buf, got, handle)
                    else:
                        self._work.put((request, segment, buf, got), bulk=bulk)
                    position = segment.start + got
        except ObjectNotFoundError:
            raise IntegrityError(
                f"pack {request.pack_id} is missing from storage", hint="run `cloudkeep repository check`"
            ) from None

    def _is_bulk(self, request: Request) -> bool:
        """Whether ``request`` goes to the bulk line (only where some decoders take nothing else)."""
        return self._split and self.bulk is not None and self.bulk(request)

    def _sort(self, pending: Iterator[Request], lines: _Lines[Request]) -> None:
        """Put the plan's requests into their lines as they come (its own thread: the plan blocks)."""
        try:
            for request in pending:
                if self._error is not None:
                    return
                lines.put(request, bulk=self._is_bulk(request))
        except BaseException as exc:  # handed to run(), which raises it
            self.fail(exc)
        finally:
            lines.close()

    def _decode_all(self, general: bool, handle: Handler | None = None) -> None:
        for item in self._work.take(general=general, delegate=handle is not None):
            self._handle(*item, handle)

    def _handle(
        self, request: Request, segment: Segment, buf: bytearray, got: int, handle: Handler | None = None
    ) -> None:
        try:
            if self._error is None:
                (handle or self.handle)(request, segment, memoryview(buf)[:got])
        except BaseException as exc:  # handed to run(), which raises it
            self.fail(exc)
        finally:
            self._give_back(buf)


class _Lines(Generic[Item]):
    """Work in two lines: bulk items, for any taker, and the others, for general takers only."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.small: deque[Item] = deque()
        self.bulk: deque[Item] = deque()
        self.done = False
        self.left = False  # small items for delegates only (``RunReader.leave_general``)

    def put(self, item: Item, *, bulk: bool) -> None:
        with self.changed:
            (self.bulk if bulk else self.small).append(item)
            self.changed.notify_all()

    def leave_general(self, left: bool) -> None:
        with self.changed:
            self.left = left
            self.changed.notify_all()

    def close(self) -> None:
        """No more items: takers return once the lines are empty."""
        with self.changed:
            self.done = True
            self.changed.notify_all()

    def take(self, *, general: bool, delegate: bool = False) -> Iterator[Item]:
        """A taker's items: a general one takes small ones first (unless they are ``left`` to
        delegates and it is not one), then helps with the bulk."""
        while True:
            with self.changed:
                while not (
                    (general and self.small and (delegate or not self.left)) or self.bulk or self.done
                ):
                    self.changed.wait()
                if general and self.small and (delegate or not self.left):
                    item = self.small.popleft()
                elif self.bulk:
                    item = self.bulk.popleft()
                else:
                    return
            yield item


class _SharedLine(Iterator[Request]):
    """The general line of a ``_Lines`` as one iterator any number of takers share (``add_taker``)."""

    def __init__(self, lines: _Lines[Request]) -> None:
        self.lines = lines

    def __next__(self) -> Request:
        for request in self.lines.take(general=True, delegate=True):
            return request
        raise StopIteration


def _skip(stream: RangeStream, count: int, reader: RunReader) -> None:
    """Read past ``count`` unneeded bytes between two segments of one request (remote only)."""
    if count <= 0:
        return
    scratch = reader._take_buffer(min(count, reader.cap))
    try:
        view = memoryview(scratch)
        while count > 0:
            n = len(read_exactly(stream, view[: min(count, len(view))]))
            if not n:
                return
            count -= n
    finally:
        reader._give_back(scratch)
