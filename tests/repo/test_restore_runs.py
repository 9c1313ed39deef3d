"""The run reader: needed blobs read in coalesced ranges, decoded on other threads, memory bounded.

Planning is checked on hand-made pack entries; reading on real stores: a local folder and S3 on
the moto server (the remote path: one ranged GET streams a pack's segments).
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest

from cloudkeep.errors import IntegrityError
from cloudkeep.repo import Repository, backup_files, restore
from cloudkeep.repo.index import Location
from cloudkeep.repo.pack import BlobEntry, pack_key
from cloudkeep.repo.restorer import BULK_BLOB, _bulk
from cloudkeep.repo.runreader import Request, RunReader, Segment, plan_requests, plan_segments
from cloudkeep.storage import open_store
from cloudkeep.storage.base import ObjectStore, RangeStream
from tests.repo.conftest import FAST_KDF, PASSWORD, RESTORE_THREADS, SMALL_CHUNKS, restored

KIB, MIB = 1024, 2**20


def _entry(offset: int, length: int, tag: int = 0) -> BlobEntry:
    return BlobEntry("data", bytes([tag]) * 32, offset, length, length)


def test_neighbours_merge_until_a_gap_or_the_cap() -> None:
    entries = [
        _entry(5000, 1000, 3),  # out of order: sorted by offset
        _entry(100, 1000, 1),
        _entry(1200, 3000, 2),  # 100 bytes after the first: same segment
        _entry(100_000, 500, 4),  # 94 KB later: a new segment (gap 64 KiB)
        _entry(100_600, 3 * MIB, 5),  # larger than the cap: a segment of its own
        _entry(100_600 + 3 * MIB, 10, 6),
    ]
    segments = plan_segments(entries, gap=64 * KIB, cap=MIB)
    assert [(s.start, s.end) for s in segments] == [
        (0, 6000),  # the first one starts at the pack's start: it carries the prelude
        (100_000, 100_500),
        (100_600, 100_600 + 3 * MIB),
        (100_600 + 3 * MIB, 100_610 + 3 * MIB),
    ]
    assert [[e.id[0] for e in s.entries] for s in segments] == [[1, 2, 3], [4], [5], [6]]
    assert [s.raw for s in segments] == [5000, 500, 3 * MIB, 10]  # raw lengths summed per segment


def test_a_far_first_blob_does_not_drag_the_prelude_in() -> None:
    (segment,) = plan_segments([_entry(200 * KIB, 10)], gap=64 * KIB, cap=MIB)
    assert (segment.start, segment.end) == (200 * KIB, 200 * KIB + 10)


def test_remote_requests_span_a_pack_and_split_at_long_gaps() -> None:
    locs = [Location("p1", _entry(i * 300 * KIB, 200 * KIB, i)) for i in range(10)]  # 100 KiB gaps
    locs += [Location("p1", _entry(40 * MIB, 10, 50))]  # far away: another request
    locs += [Location("p2", _entry(0, 4 * MIB, 60))]
    remote = plan_requests(locs, remote=True, gap=64 * KIB, cap=MIB, request_gap=MIB)
    assert [(r.pack_id, r.start, r.end, len(r.segments)) for r in remote] == [
        ("p2", 0, 4 * MIB, 1),  # largest first
        ("p1", 0, 9 * 300 * KIB + 200 * KIB, 10),
        ("p1", 40 * MIB, 40 * MIB + 10, 1),
    ]
    local = plan_requests(locs, remote=False, gap=64 * KIB, cap=MIB, request_gap=MIB)
    assert all(len(r.segments) == 1 for r in local) and len(local) == 12
    covered = sorted(e.id[0] for r in local for s in r.segments for e in s.entries)
    assert covered == sorted(loc.entry.id[0] for loc in locs)  # every blob exactly once


class _CountingStore:
    """A real store, counting the ranged reads a restore makes (delegates everything else)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store, self.ranges = store, []

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    @contextmanager
    def open_range(self, key: str, offset: int, length: int) -> Iterator[RangeStream]:
        self.ranges.append((key, offset, length))
        with self._store.open_range(key, offset, length) as stream:
            yield stream


def _tree(root: Path, seed: int) -> None:
    rng = random.Random(seed)
    for d in range(6):
        folder = root / f"d{d}"
        folder.mkdir(parents=True)
        for f in range(40):
            (folder / f"f{f}").write_bytes(rng.randbytes(rng.randrange(0, 9000)))
    (root / "same-a").write_bytes(b"shared\n" * 500)
    (root / "same-b").write_bytes(b"shared\n" * 500)
    (root / "big.bin").write_bytes(rng.randbytes(3 * MIB))
    with open(root / "sparse.img", "wb") as fh:
        fh.write(rng.randbytes(4000))
        fh.seek(2 * MIB)
        fh.write(b"end")


def _same(a: Path, b: Path) -> None:
    for dirpath, _, names in os.walk(a):
        for name in names:
            path = Path(dirpath) / name
            other = b / path.relative_to(a)
            assert other.read_bytes() == path.read_bytes(), path
            assert other.stat().st_mtime_ns == path.stat().st_mtime_ns, path
            assert other.stat().st_mode == path.stat().st_mode, path


def test_restore_from_s3_reads_each_pack_range_in_one_request(
    aws_options: dict[str, str], unique_name: str, tmp_path: Path
) -> None:
    boto3.client(
        "s3",
        endpoint_url=aws_options["endpoint_url"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=unique_name)
    store = open_store(f"s3://{unique_name}/repo", **aws_options)
    assert store.remote
    repo = Repository.create(store, PASSWORD, pack_size=512 * KIB, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
    src = tmp_path / "src"
    _tree(src, seed=5)
    snap = backup_files(repo, [src], hostname="h")
    counting = _CountingStore(store)
    repo.store = counting  # type: ignore[assignment]
    result = restore(repo, snap.id, tmp_path / "out")
    assert result.ok and result.verified == result.files == 244, result.errors
    _same(src, restored(tmp_path / "out", src))
    data_reads = [r for r in counting.ranges if "/data/" in r[0] or r[0].startswith("data/")]
    packs = {key for key, _, _ in data_reads}
    # Every blob of the tree is needed and packs are contiguous: one GET per pack, none for preludes.
    assert len(data_reads) == len(packs) > 3
    assert all(offset == 0 for _, offset, _ in data_reads)


def test_a_pack_missing_mid_restore_is_an_integrity_error(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'repo'}")
    repo = Repository.create(store, PASSWORD, pack_size=256 * KIB, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
    src = tmp_path / "src"
    _tree(src, seed=6)
    snap = backup_files(repo, [src], hostname="h")
    data_keys = sorted(info.key for info in store.list("data/"))
    assert len(data_keys) > 4
    os.unlink(tmp_path / "repo" / data_keys[len(data_keys) // 2])  # trees are in their own packs
    with pytest.raises(IntegrityError, match="missing from storage"):
        restore(repo, snap.id, tmp_path / "out")


def _pack(store: ObjectStore, blobs: int, size: int) -> tuple[str, list[BlobEntry]]:
    body = os.urandom(blobs * size)
    store.put(pack_key("ab" * 32), body)
    return "ab" * 32, [BlobEntry("data", i.to_bytes(32, "big"), i * size, size, size) for i in range(blobs)]


@pytest.mark.parametrize("readers", [0, 2])
def test_memory_is_bounded_by_the_buffer_pool(tmp_path: Path, readers: int) -> None:
    """However many segments, buffers allocated never exceed decoders + readers: one per thread."""
    store = open_store(f"file://{tmp_path / 'repo'}")
    pack_id, entries = _pack(store, 200, 200 * KIB)  # 200 segments of one blob (cap 256 KiB)
    entries.append(BlobEntry("data", b"L" * 32, 200 * 200 * KIB, 0, 0))  # an empty last blob
    requests = plan_requests([Location(pack_id, e) for e in entries], remote=False, cap=256 * KIB)
    seen: set[int] = set()
    handled: list[int] = []
    lock = threading.Lock()

    def handle(request: Request, segment: Segment, view: memoryview) -> None:
        assert len(view) == segment.end - segment.start
        with lock:
            seen.add(id(view.obj))
            handled.extend(e.offset for e in segment.entries)

    RunReader(store, handle, readers=readers, decoders=3, cap=256 * KIB).run(requests)
    assert sorted(handled) == [e.offset for e in entries]
    assert len(seen) <= 3 + readers


def test_a_blob_larger_than_the_cap_gets_a_buffer_of_its_own(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'repo'}")
    pack_id, entries = _pack(store, 3, 300 * KIB)
    body = store.get(pack_key(pack_id))
    got: dict[int, bytes] = {}

    def handle(request: Request, segment: Segment, view: memoryview) -> None:
        got[segment.start] = bytes(view)

    requests = plan_requests([Location(pack_id, e) for e in entries], remote=True, cap=256 * KIB)
    assert len(requests) == 1 and len(requests[0].segments) == 3
    RunReader(store, handle, readers=1, decoders=1, cap=256 * KIB).run(requests)
    assert got == {e.offset: body[e.offset : e.offset + e.length] for e in entries}


@pytest.mark.parametrize("readers", [0, 2])
def test_a_failing_decoder_stops_the_readers_and_raises(tmp_path: Path, readers: int) -> None:
    store = open_store(f"file://{tmp_path / 'repo'}")
    pack_id, entries = _pack(store, 300, 64 * KIB)
    requests = plan_requests([Location(pack_id, e) for e in entries], remote=False, gap=0, cap=64 * KIB)
    handled: list[int] = []

    def handle(request: Request, segment: Segment, view: memoryview) -> None:
        handled.append(segment.start)
        if len(handled) == 5:
            raise IntegrityError("blob 5 is damaged")

    with pytest.raises(IntegrityError, match="blob 5 is damaged"):
        RunReader(store, handle, readers=readers, decoders=1).run(requests)
    assert len(handled) == 5  # what was already read and queued is given back, not handled


def test_remote_segments_are_capped_and_still_one_request_per_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Remote buffers hold a segment each (memory); the segments of a pack stream through one GET."""
    from cloudkeep.repo import restorer
    from cloudkeep.repo.runreader import SEGMENT_CAP

    store = open_store(f"file://{tmp_path / 'repo'}")
    repo = Repository.create(store, PASSWORD, pack_size=4 * MIB, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
    src = tmp_path / "src"
    _tree(src, seed=6)
    snap = backup_files(repo, [src], hostname="h")
    counting = _CountingStore(store)
    counting.remote = True  # the remote path (reader threads, streamed requests) over a local folder
    repo.store = counting  # type: ignore[assignment]
    sizes: list[int] = []
    original = restorer._Restorer._restore_segment

    def recording(self: restorer._Restorer, request: Request, segment: Segment, view: memoryview) -> None:
        sizes.append(segment.end - segment.start)
        original(self, request, segment, view)

    monkeypatch.setattr(restorer._Restorer, "_restore_segment", recording)
    result = restore(repo, snap.id, tmp_path / "out")
    assert result.ok and result.verified == result.files == 244, result.errors
    _same(src, restored(tmp_path / "out", src))
    assert max(sizes) <= SEGMENT_CAP and len(sizes) >= 4  # 3.5 MiB of data at least
    data_reads = [r for r in counting.ranges if "/data/" in r[0] or r[0].startswith("data/")]
    assert len(data_reads) == len({key for key, _, _ in data_reads}) < len(sizes)


def _mixed_pack(store: ObjectStore) -> tuple[list[Request], set[int]]:
    """Requests for a pack of 60 small blobs then 40 large ones (each its own segment); the large
    ones' offsets."""
    sizes = [4 * KIB] * 60 + [200 * KIB] * 40
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    store.put(pack_key("cd" * 32), os.urandom(sum(sizes)))
    entries = [BlobEntry("data", i.to_bytes(32, "big"), offsets[i], n, n) for i, n in enumerate(sizes)]
    requests = plan_requests([Location("cd" * 32, e) for e in entries], remote=False, gap=0, cap=4 * KIB)
    return requests, {e.offset for e in entries if e.length > 4 * KIB}


def _large(request: Request) -> bool:
    return all(entry.raw_length > 4 * KIB for segment in request.segments for entry in segment.entries)


# Decoders reading their own segments (local), or fed by reader threads (remote)
READERS = pytest.mark.parametrize("readers", [0, 2], ids=["decoders-read", "reader-threads"])


@READERS
def test_small_requests_go_to_the_general_decoder_bulk_ones_to_any(tmp_path: Path, readers: int) -> None:
    store = open_store(f"file://{tmp_path / 'repo'}")
    requests, large = _mixed_pack(store)
    # Reader threads read in the plan's order: a large one comes before the buffers are full of
    # small ones the general decoder holds up (waiting for the other decoder to take part).
    small, bulk = [r for r in requests if r.start not in large], [r for r in requests if r.start in large]
    requests = [r for pair in zip(small[:40], bulk, strict=True) for r in pair] + small[40:]
    by_thread: dict[str, list[int]] = {}
    lock = threading.Lock()
    bulk_taken = threading.Event()

    def handle(request: Request, segment: Segment, view: memoryview) -> None:
        assert len(view) == segment.end - segment.start
        name = threading.current_thread().name
        with lock:
            by_thread.setdefault(name, []).append(segment.start)
        if name.endswith("-1"):
            bulk_taken.set()
        elif segment.start not in large:  # small ones last until the other decoder takes part
            bulk_taken.wait(timeout=30)

    RunReader(store, handle, readers=readers, decoders=2, cap=4 * KIB, bulk=_large, general=1).run(requests)
    handled = [start for starts in by_thread.values() for start in starts]
    assert sorted(handled) == sorted(r.start for r in requests)  # every request once
    kind = "ck-decode" if readers else "ck-restore"
    assert set(by_thread) <= {f"{kind}-0", f"{kind}-1"}
    assert set(by_thread.get(f"{kind}-1", [])) <= large  # the bulk decoder never took a small one
    assert bulk_taken.is_set()  # and it took part while the other one was on the small ones


@READERS
@pytest.mark.parametrize("fail_on", ["small", "large"])
def test_a_failing_decoder_stops_both_lines_and_raises(tmp_path: Path, fail_on: str, readers: int) -> None:
    store = open_store(f"file://{tmp_path / 'repo'}")
    requests, large = _mixed_pack(store)
    handled: list[int] = []
    lock = threading.Lock()

    def handle(request: Request, segment: Segment, view: memoryview) -> None:
        with lock:
            handled.append(segment.start)
        if (segment.start in large) == (fail_on == "large"):
            raise IntegrityError(f"a {fail_on} blob is damaged")

    reader = RunReader(store, handle, readers=readers, decoders=2, cap=4 * KIB, bulk=_large, general=1)
    with pytest.raises(IntegrityError, match=f"a {fail_on} blob is damaged"):
        reader.run(requests)
    assert len(handled) < len(requests)  # stopped early, and every thread ended (run returned)


@READERS
def test_a_decoder_waiting_for_bulk_does_not_hold_up_the_small_ones(tmp_path: Path, readers: int) -> None:
    """The plan goes on only once its small requests are restored, while the bulk line is empty:
    a bulk decoder waiting for work must not keep the other from taking them."""
    store = open_store(f"file://{tmp_path / 'repo'}")
    requests, large = _mixed_pack(store)
    bulk = [r for r in requests if r.start in large]
    small = [r for r in requests if r.start not in large]
    bulk_done, small_done = threading.Event(), threading.Event()
    handled: list[int] = []
    lock = threading.Lock()

    def handle(request: Request, segment: Segment, view: memoryview) -> None:
        with lock:
            handled.append(segment.start)
            if segment.start == bulk[0].start:
                bulk_done.set()
            if {r.start for r in small} <= set(handled):
                small_done.set()

    def plan() -> Iterator[Request]:
        yield bulk[0]
        assert bulk_done.wait(timeout=30)
        yield from small
        assert small_done.wait(timeout=30), "the small requests waited for the bulk line"
        yield from bulk[1:]

    RunReader(store, handle, readers=readers, decoders=2, cap=4 * KIB, bulk=_large, general=1).run(plan())
    assert sorted(handled) == sorted(r.start for r in requests)


@READERS
def test_small_requests_left_to_a_delegate_go_to_it_alone_until_taken_back(
    tmp_path: Path, readers: int
) -> None:
    """While the general decoder leaves small work to a delegate (restore's worker process, as
    planning goes on), it takes bulk work only; once it takes small work back, it helps again."""
    store = open_store(f"file://{tmp_path / 'repo'}")
    requests, large = _mixed_pack(store)
    small = [r for r in requests if r.start not in large]
    bulk = [r for r in requests if r.start in large]
    first = {r.start for r in small[:30]} | large
    by_taker: dict[str, list[int]] = {}
    lock = threading.Lock()
    go, first_done, general_back = threading.Event(), threading.Event(), threading.Event()

    def record(taker: str, segment: Segment) -> None:
        with lock:
            by_taker.setdefault(taker, []).append(segment.start)
            if first <= {start for starts in by_taker.values() for start in starts}:
                first_done.set()

    def handle(request: Request, segment: Segment, view: memoryview) -> None:
        record(threading.current_thread().name, segment)
        if segment.start not in first and segment.start not in large:
            general_back.set()

    def delegated(request: Request, segment: Segment, view: memoryview) -> None:
        record("delegate", segment)
        if segment.start not in first:  # the second part's small ones wait for the general decoder
            general_back.wait(timeout=30)

    def plan() -> Iterator[Request]:
        assert go.wait(timeout=30)
        yield from [r for pair in zip(small[:30], bulk[:30], strict=True) for r in pair] + bulk[30:]
        assert first_done.wait(timeout=30)
        reader.leave_general(False)
        yield from small[30:]

    reader = RunReader(
        store, handle, readers=readers, decoders=2, cap=4 * KIB, bulk=_large, general=1, delegates=1
    )
    reader.start(plan())
    reader.add_taker(delegated)
    reader.leave_general(True)
    go.set()
    reader.join()
    kind = "ck-decode" if readers else "ck-restore"
    handled = [start for starts in by_taker.values() for start in starts]
    assert sorted(handled) == sorted(r.start for r in requests)  # every request once
    general_took = set(by_taker.get(f"{kind}-0", []))
    assert not general_took & {r.start for r in small[:30]}  # left to the delegate: none taken
    assert set(by_taker["delegate"]) >= {r.start for r in small[:30]}
    assert general_back.is_set()  # taken back: it restored small ones of the second part
    assert set(by_taker.get(f"{kind}-1", [])) <= large


def test_without_a_bulk_line_nothing_is_left_to_a_delegate(tmp_path: Path) -> None:
    """With no decoder of bulk only, every item is small: leaving them to a delegate would leave
    this process's decoder nothing to do, so ``leave_general`` changes nothing there."""
    store = open_store(f"file://{tmp_path / 'repo'}")
    requests, _ = _mixed_pack(store)
    takers: list[str] = []
    lock = threading.Lock()
    go, decoder_took = threading.Event(), threading.Event()

    def handle(request: Request, segment: Segment, view: memoryview) -> None:
        with lock:
            takers.append("decoder")
        decoder_took.set()

    def delegated(request: Request, segment: Segment, view: memoryview) -> None:
        with lock:
            first = "delegate" not in takers
            takers.append("delegate")
        if first:  # the delegate holds its first item until the decoder has taken one
            decoder_took.wait(timeout=10)

    def plan() -> Iterator[Request]:
        assert go.wait(timeout=30)
        yield from requests

    reader = RunReader(store, handle, readers=2, decoders=1, cap=4 * KIB, delegates=1)
    reader.start(plan())
    reader.add_taker(delegated)
    reader.leave_general(True)
    go.set()
    reader.join()
    assert len(takers) == len(requests) and "decoder" in takers


def test_a_request_is_bulk_by_its_blobs_raw_size_not_their_stored_size() -> None:
    """Chunks of large files compress: what decides is what a decoder writes (raw lengths)."""

    def request(raw: list[int], stored: int) -> Request:
        entries = [BlobEntry("data", i.to_bytes(32, "big"), i * stored, stored, n) for i, n in enumerate(raw)]
        return plan_requests([Location("ab" * 32, e) for e in entries], remote=True)[0]

    assert _bulk(request([BULK_BLOB] * 8, stored=BULK_BLOB // 4))  # compressed chunks of a large file
    assert not _bulk(request([4 * KIB] * 8, stored=4 * KIB))  # small files
    assert not _bulk(request([4 * KIB] * 7 + [BULK_BLOB], stored=4 * KIB))  # mostly small: general line


def test_a_failure_raised_by_the_last_hand_out_leaves_no_thread_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader's failure raised when planning hands out its last batch: the sorting thread, which
    waits for the end of the plan, is told it too (once it waited forever, and the process too)."""
    from cloudkeep.repo.restorer import _Restorer

    store = open_store(f"file://{tmp_path / 'repo'}")
    repo = Repository.create(store, PASSWORD, pack_size=256 * KIB, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
    src = tmp_path / "src"
    _tree(src, seed=8)
    snap = backup_files(repo, [src], hostname="h")
    fetch_rest = _Restorer.fetch_rest

    def failed_before(self: _Restorer) -> None:  # as if a decoder had failed on an earlier batch
        self.reader.fail(IntegrityError("a damaged blob"))
        fetch_rest(self)

    monkeypatch.setattr(_Restorer, "fetch_rest", failed_before)
    with pytest.raises(IntegrityError, match="a damaged blob"):
        restore(repo, snap.id, tmp_path / "out")
    assert not [t.name for t in threading.enumerate() if t.name.startswith(RESTORE_THREADS)]
