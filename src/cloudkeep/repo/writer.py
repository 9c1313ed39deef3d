"""Writing blobs during a backup: dedup, compress+encrypt, pack, upload, index — with backpressure.

One ``BlobWriter`` is one backup session. Callers (many threads) hand it blobs; it skips blobs the
index already has, encodes new ones in the calling thread (zstd, AES-GCM and BLAKE3 release the
GIL, so threads scale across cores), appends them to the open pack, and uploads full packs on a
small I/O pool. At most ``max_inflight_packs`` packs wait in memory, bounding RAM. Index files
are written every few packs so that a killed backup's uploads are reused by its rerun, and a
``sessions/<id>`` marker tells prune that a backup is in progress.
"""

from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import cast

from cloudkeep.repo.index import encode_index_file, new_index_key
from cloudkeep.repo.pack import DATA, TREE, BlobEntry, PackWriter, blob_aad, pack_key
from cloudkeep.repo.repository import SESSIONS_PREFIX, Repository

HEARTBEAT_S = 300.0  # prune's grace period must be well above this


@dataclass
class WriterStats:
    blobs_new: int = 0
    bytes_new: int = 0  # raw bytes of blobs not already in the repository
    bytes_stored: int = 0  # encoded bytes of those blobs
    bytes_uploaded: int = 0  # whole packs sent to storage
    packs: int = 0


class RateLimiter:
    """A token bucket shared by all upload threads: ``bandwidth_limit`` bytes per second overall."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.lock = threading.Lock()
        self.next_free = time.monotonic()

    def acquire(self, nbytes: int) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + nbytes / self.rate
        if start > now:
            time.sleep(start - now)


class BlobWriter:
    def __init__(
        self,
        repo: Repository,
        *,
        hostname: str = "",
        retain_until: datetime | None = None,
        bandwidth_limit: int | None = None,
        upload_threads: int = 2,
        max_inflight_packs: int = 1,
        index_every: int = 8,
    ) -> None:
        self.repo = repo
        self.retain_until = retain_until
        self.stats = WriterStats()
        self.session_key = repo.writer_prefix + SESSIONS_PREFIX + secrets.token_hex(16)
        self.hostname = hostname
        # The session "starts" when its view of the index was loaded: prune compares this with its marks.
        self.started = min(datetime.now(UTC), repo.index_loaded_at)
        self._pending: set[bytes] = set()
        self._writers = {DATA: PackWriter(DATA), TREE: PackWriter(TREE)}
        self._unindexed: dict[str, list[BlobEntry]] = {}
        self._written_index: list[str] = []
        self._index_every = index_every
        self._pool = ThreadPoolExecutor(max_workers=upload_threads, thread_name_prefix="ck-upload")
        self._slots = threading.BoundedSemaphore(max_inflight_packs)
        self._handoff = threading.Condition()
        self._full_waiting = 0
        self._futures: list[Future[None]] = []
        self._error: BaseException | None = None
        self._limiter = RateLimiter(bandwidth_limit) if bandwidth_limit else None
        self._closed = False
        self._stop = threading.Event()
        self.heartbeat()
        self._heartbeat = threading.Thread(target=self._beat, name="ck-session", daemon=True)
        self._heartbeat.start()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort() if exc is not None else self.close()

    # -- session marker --------------------------------------------------------------------

    def heartbeat(self, seen: datetime | None = None) -> None:
        """Refresh the session marker (``seen`` is for tests that simulate the passage of time)."""
        self.repo.write_marker(
            self.session_key,
            {
                "hostname": self.hostname,
                "started": self.started.isoformat(),
                "seen": (seen or datetime.now(UTC)).isoformat(),
            },
        )

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.heartbeat()
            except Exception:
                continue

    # -- blobs -----------------------------------------------------------------------------

    def save(
        self, blob_type: str, data: bytes | memoryview, blob_id: bytes | None = None, *, force: bool = False
    ) -> tuple[bytes, bool]:
        """Store a blob unless the repository already has it; returns ``(id, was_new)``.

        ``force`` stores it even if indexed (prune's repack copies blobs out of a pack to retire).
        """
        self._raise_if_failed()
        if blob_id is None:
            blob_id = self.repo.crypter.content_id(data)
        with self.repo.lock:
            if (blob_id in self.repo.index and not force) or blob_id in self._pending:
                return blob_id, False
            self._pending.add(blob_id)
        encoded = self.repo.crypter.encode(data, blob_aad(blob_type, blob_id), compress=True)
        full: PackWriter | None = None
        with self._handoff:
            # While a full pack waits for an upload slot, nobody fills another one: without this,
            # every producer thread could end up holding a full pack (6 x 32 MiB).
            self._handoff.wait_for(lambda: self._full_waiting == 0 or self._error is not None)
        with self.repo.lock:
            writer = self._writers[blob_type]
            writer.add(blob_id, encoded, len(data))
            self.stats.blobs_new += 1
            self.stats.bytes_new += len(data)
            self.stats.bytes_stored += len(encoded)
            if writer.size >= self.repo.config.pack_size:
                full = writer
                self._writers[blob_type] = PackWriter(blob_type)
                with self._handoff:
                    self._full_waiting += 1
        if full is not None:
            try:
                self._submit(full)
            finally:
                with self._handoff:
                    self._full_waiting -= 1
                    self._handoff.notify_all()
        return blob_id, True

    def _submit(self, writer: PackWriter) -> None:
        self._slots.acquire()  # backpressure: producers wait while too many packs are in flight
        try:
            pack_id, body, entries = writer.finish(self.repo.crypter)
            pack_id = self.repo.writer_prefix + pack_id  # a writer's packs live in its namespace
            future = self._pool.submit(self._upload, pack_id, body, entries)
        except BaseException:
            self._slots.release()
            raise
        with self.repo.lock:
            self._futures = [f for f in self._futures if not f.done()] + [future]

    def _upload(self, pack_id: str, body: bytearray, entries: list[BlobEntry]) -> None:
        try:
            if self._limiter:
                self._limiter.acquire(len(body))
            # Handed over without a copy: every backend accepts a bytes-like object (Azure converts).
            self.repo.store.put(pack_key(pack_id), cast(bytes, body), retain_until=self.retain_until)
            write_index = False
            with self.repo.lock:
                self.repo.index.add_pack(pack_id, entries)
                for entry in entries:
                    self._pending.discard(entry.id)
                self._unindexed[pack_id] = entries
                self.stats.bytes_uploaded += len(body)
                self.stats.packs += 1
                write_index = len(self._unindexed) >= self._index_every
            if write_index:
                self._write_index()
        except BaseException as exc:
            self._error = self._error or exc
            raise
        finally:
            self._slots.release()

    def _write_index(self) -> None:
        with self.repo.lock:
            packs, self._unindexed = self._unindexed, {}
        if not packs:
            return
        key = new_index_key(self.repo.writer_prefix)
        self.repo.store.put(key, encode_index_file(self.repo.crypter, packs), retain_until=self.retain_until)
        with self.repo.lock:
            self.repo.index_files.add(key)
            self._written_index.append(key)
        self.heartbeat()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # -- completion ------------------------------------------------------------------------

    def flush(self) -> None:
        """Upload partial packs, wait for every upload, write the remaining index: all durable after."""
        for blob_type in (DATA, TREE):
            with self.repo.lock:
                writer = self._writers[blob_type]
                self._writers[blob_type] = PackWriter(blob_type)
            if len(writer):
                self._submit(writer)
        with self.repo.lock:
            futures = list(self._futures)
        for future in futures:
            future.result()
        self._raise_if_failed()
        self._write_index()

    def close(self) -> None:
        """Flush and end the session (remove the marker)."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._stop.set()
            self._pool.shutdown(wait=True)
        self.repo.store.delete(self.session_key)

    def abort(self) -> None:
        """Stop without committing: uploaded packs stay (indexed ones are reused by the next run)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            self._write_index()  # keep what was uploaded reusable
            self.repo.store.delete(self.session_key)
        except Exception:
            pass
