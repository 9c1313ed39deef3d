"""Writing blobs during a backup: dedup, compress+encrypt, pack, upload, index — with backpressure.

One ``BlobWriter`` is one backup session. Callers (many threads) hand it blobs; it skips blobs the
index already has, encodes new ones in the calling thread into a reusable per-thread buffer
(zstd, AES-GCM and BLAKE3 release the GIL, so threads scale across cores), appends them to the
open pack's staging file, and uploads full packs on a small I/O pool. Packs are staged on disk
(``ObjectStore.staging_dir``), so RAM does not grow with the pack size; at most
``max_inflight_packs`` finished packs wait for upload, bounding staging space. Index files are
written every few packs so that a killed backup's uploads are reused by its rerun, and a
``sessions/<id>`` marker tells prune that a backup is in progress.

The session's markers (its lease, which prune honours) are ``writersession.py``; the upload
bandwidth limit is ``ratelimit.py``. ``reserve`` and ``adopt_pack`` let another process assemble
packs from blobs this session claimed (``procworker.py``: a backup's file content on two cores).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn

from cloudkeep.compat import UTC
from cloudkeep.errors import ConfigurationError, PermissionDeniedError
from cloudkeep.repo.crypto import CODEC_ZSTD, WHOLE_MOST, PayloadStream
from cloudkeep.repo.generations import SKEW, read_horizon
from cloudkeep.repo.index import encode_index_file, new_index_key, pack_records
from cloudkeep.repo.layout import SESSIONS_PREFIX
from cloudkeep.repo.pack import DATA, TREE, BlobEntry, PackWriter, blob_aad, pack_key, sweep_stale_staging
from cloudkeep.repo.ratelimit import RateLimiter as RateLimiter
from cloudkeep.repo.repository import Repository
from cloudkeep.repo.steps import step
from cloudkeep.repo.writermac import add_mac

# prune, lock and tests name these here (``X as X``: re-exported)
from cloudkeep.repo.writersession import END_SUFFIX as END_SUFFIX
from cloudkeep.repo.writersession import HEARTBEAT_S as HEARTBEAT_S
from cloudkeep.repo.writersession import SESSION_LEASE_S as SESSION_LEASE_S
from cloudkeep.repo.writersession import SessionExpiredError as SessionExpiredError
from cloudkeep.repo.writersession import SessionLease, session_clock
from cloudkeep.repo.writersession import end_hash as end_hash
from cloudkeep.repo.writersession import session_name as session_name
from cloudkeep.storage.base import ObjectExistsError, as_write_error, store_writes

if TYPE_CHECKING:
    from cloudkeep.repo.confidential import PackSealer

log = logging.getLogger(__name__)


@dataclass
class WriterStats:
    blobs_new: int = 0
    bytes_new: int = 0  # raw bytes of blobs not already in the repository
    bytes_stored: int = 0  # encoded bytes of those blobs
    bytes_uploaded: int = 0  # whole packs sent to storage
    packs: int = 0
    # Reused packs whose lock this credential may not extend (agents hold no lock permission:
    # docs/security.md); the server extends locks instead (immutability by generations, branch locks).
    locks_refused: int = 0


class BlobWriter(SessionLease):
    def __init__(
        self,
        repo: Repository,
        *,
        hostname: str = "",
        retain_until: datetime | None = None,
        bandwidth_limit: int | None = None,
        upload_threads: int = 2,
        max_inflight_packs: int = 2,
        index_every: int = 8,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.repo = repo
        self.retain_until = retain_until
        self._now = wall_clock or (lambda: datetime.now(UTC))
        # Immutability by generations (repo/generations.py): the store locks what this writer adds
        # by its default retention, so it asks for no lock and reuses only packs locked long enough.
        self.horizon = read_horizon(repo) if retain_until is not None else None
        if self.horizon is not None and retain_until is not None:
            covered = self._now() + self.horizon.default_period - SKEW
            if retain_until > covered:
                raise ConfigurationError(
                    f"retention until {retain_until:%Y-%m-%d} is longer than the repository's default lock "
                    f"({self.horizon.default_period.days} days)",
                    hint="raise the repository's immutability or ask for a shorter retention",
                )
        self.lock_until = None if self.horizon is not None else retain_until  # what puts ask for
        self._rewritten: set[bytes] = set()  # blobs stored again: their packs' locks were too short
        self._written_at: dict[str, int] = {}
        self.stats = WriterStats()
        self.session_key = repo.writer_prefix + SESSIONS_PREFIX + secrets.token_hex(16)
        self._beats = 0  # refreshes written so far: each is a new object (create-only credentials)
        self._end_secret = secrets.token_hex(16)
        self.hostname = hostname
        self.started = self._now()
        self._clock = clock or session_clock
        self._refreshed: float | None = None  # session clock when the last refresh started
        self._expired: str | None = None  # why the lease is lost, once it is
        self._pending: set[bytes] = set()
        self._staging = repo.store.staging_dir
        # A store that checks uploads by MD5 gets it from the pack as it is staged (its own or a
        # worker process's): hashing the file again before its PUT was a second pass on a core.
        self.pack_md5 = repo.store.upload_md5(self.lock_until is not None, repo.config.pack_size)
        sweep_stale_staging(self._staging)
        self._packs: dict[str, PackWriter | None] = {DATA: None, TREE: None}
        # The key of each type's open (or next) pack: rotated whenever a pack is closed.
        self._sealers = {DATA: repo.keyring.new_pack_sealer(), TREE: repo.keyring.new_pack_sealer()}
        self._pack_locks = {DATA: threading.Lock(), TREE: threading.Lock()}
        self._staged: set[str] = set()  # finished packs' files not yet consumed by an upload
        self._reused_packs: set[str] = set()  # packs holding blobs this session reused (locked backups)
        self._written_packs: set[str] = set()
        self._unindexed: dict[str, bytes] = {}  # pack id → its records for the next index file
        self._written_index: list[str] = []
        self._index_every = index_every
        self._pool = ThreadPoolExecutor(max_workers=upload_threads, thread_name_prefix="ck-upload")
        self._slots = threading.BoundedSemaphore(max_inflight_packs)
        self._futures: list[Future[None]] = []
        self._error: BaseException | None = None
        self._limiter = RateLimiter(bandwidth_limit) if bandwidth_limit else None
        self._closed = False
        self._stop = threading.Event()
        self.heartbeat()
        step("backup:session-started")
        # Only now is the dedup index final: a mark visible before the session is seen here, and
        # a prune that marks later lists this session and waits for it.
        repo.refresh_doomed()
        step("backup:doomed-refreshed")
        self._heartbeat = threading.Thread(target=self._beat, name="ck-session", daemon=True)
        self._heartbeat.start()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort() if exc is not None else self.close()

    def save(
        self, blob_type: str, data: bytes | memoryview, blob_id: bytes | None = None, *, force: bool = False
    ) -> tuple[bytes, bool]:
        """Store a blob unless the repository already has it; returns ``(id, was_new)``.

        ``force`` stores it even if indexed (prune's repack copies blobs out of a pack to retire).
        """
        self._raise_if_failed()
        if len(data) > WHOLE_MOST:
            return self.save_pieces(blob_type, [data], blob_id, force=force)
        if blob_id is None:
            blob_id = self.repo.crypter.content_id(data)
        with self.repo.lock:
            if not self._claim(blob_id, force):
                return blob_id, False
        full: PackWriter | None = None
        try:
            aad = blob_aad(blob_type, blob_id)
            sealer = self._sealers[blob_type]
            sealed = sealer.crypter.encode_into_buffer(data, aad)
            with self._pack_locks[blob_type]:
                if self._sealers[blob_type] is not sealer:  # the pack closed meanwhile: seal for the next
                    sealer = self._sealers[blob_type]
                    sealed = sealer.crypter.encode_into_buffer(data, aad)
                pack = self._packs[blob_type]
                try:  # inline, not ``_session_fails``: this runs once per new blob
                    if pack is None:
                        pack = self._open_pack(blob_type, sealer)
                    pack.add(blob_id, sealed, len(data))
                except BaseException as exc:  # a half-written blob: this pack cannot go on
                    self._raise_recorded(exc)
                full = self._full_pack(blob_type, pack)
        except BaseException:
            self._release(blob_id)
            raise
        self._stored(len(data), len(sealed), full)
        return blob_id, True

    def save_pieces(
        self,
        blob_type: str,
        pieces: Sequence[bytes | bytearray | memoryview],
        blob_id: bytes | None = None,
        *,
        force: bool = False,
    ) -> tuple[bytes, bool]:
        """``save`` of the pieces joined, never joined: compressed a piece at a time and sealed
        into the pack as the pieces come (under its lock, so with its key).

        For a large folder's tree (one of 50,000 messages is 11 MiB): joined, then compressed and
        sealed whole into this thread's buffer, it was held once more beside its compressed copy
        three times over (the pieces, their join, the sealed blob), and the thread's buffer kept
        the largest of them until the backup ended."""
        self._raise_if_failed()
        size = sum(map(len, pieces))
        if size <= WHOLE_MOST:
            whole = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            return self.save(blob_type, memoryview(whole), blob_id, force=force)
        crypter = self.repo.crypter
        if blob_id is None:
            blob_id = crypter.content_id_of(pieces)
        with self.repo.lock:
            if not self._claim(blob_id, force):
                return blob_id, False
        try:
            codec, payload = crypter.payload_pieces(pieces, size)  # (the same for every pack key)
        except BaseException:
            self._release(blob_id)
            raise
        return self._seal_into_pack(blob_type, blob_id, size, codec, payload)

    def save_stream(self, blob_type: str, pieces: Iterable[bytes]) -> tuple[bytes, bool]:
        """``save_pieces`` of pieces made as they are taken, hashed and compressed as they come
        (``Crypter.stream_payload``): the blob is never held whole, only its compressed frame.

        For the tree of a large folder that changed (a maildir folder of 50,000 messages), whose
        11 MiB of nodes' texts had been held beside the row at the peak of an incremental. Made
        before it is known to be new: the compression is lost when the repository has it."""
        self._raise_if_failed()
        return self._stored_payload(blob_type, *self.repo.crypter.stream_payload(pieces))

    def save_streamed(self, blob_type: str, stream: PayloadStream) -> tuple[bytes, bool]:
        """``save_stream`` of a blob fed to ``stream`` (a ``PayloadStream``) piece by piece
        as its pieces came: a folder's parts' texts as worker processes send them."""
        try:
            self._raise_if_failed()
        except BaseException:
            stream.close()
            raise
        return self._stored_payload(blob_type, *stream.finish())

    def _stored_payload(
        self, blob_type: str, blob_id: bytes, size: int, payload: list[bytes | memoryview]
    ) -> tuple[bytes, bool]:
        with self.repo.lock:
            if not self._claim(blob_id):
                return blob_id, False
        return self._seal_into_pack(blob_type, blob_id, size, CODEC_ZSTD, payload)

    def _seal_into_pack(
        self, blob_type: str, blob_id: bytes, size: int, codec: int, payload: list[bytes | memoryview]
    ) -> tuple[bytes, bool]:
        """A claimed blob's payload sealed into the open pack a piece at a time, under its lock
        (so with its key)."""
        try:
            aad = blob_aad(blob_type, blob_id)
            with self._pack_locks[blob_type]:
                sealer, pack = self._sealers[blob_type], self._packs[blob_type]
                try:
                    if pack is None:
                        pack = self._open_pack(blob_type, sealer)
                    length = pack.add_pieces(blob_id, sealer.crypter.seal_pieces(codec, payload, aad), size)
                except BaseException as exc:
                    self._raise_recorded(exc)
                del payload
                full = self._full_pack(blob_type, pack)
        except BaseException:
            self._release(blob_id)
            raise
        self._stored(size, length, full)
        return blob_id, True

    def _open_pack(self, blob_type: str, sealer: PackSealer) -> PackWriter:
        """A new pack for ``blob_type``, sealed with ``sealer`` (holding its pack lock)."""
        pack = self._packs[blob_type] = PackWriter(
            blob_type, self._staging, crypter=sealer.crypter, prelude=sealer.prelude, md5=self.pack_md5
        )
        return pack

    def _raise_recorded(self, exc: BaseException) -> NoReturn:
        """A half-written blob: its pack cannot go on, nor the session."""
        error = self._record_failure(exc)
        if error is exc:
            raise exc
        raise error from exc

    def _full_pack(self, blob_type: str, pack: PackWriter) -> PackWriter | None:
        """``pack`` once it reached the pack size, the next one then sealed anew (holding its lock)."""
        if pack.size < self.repo.config.pack_size:
            return None
        self._packs[blob_type] = None
        self._sealers[blob_type] = self.repo.keyring.new_pack_sealer()
        return pack

    def _release(self, blob_id: bytes) -> None:
        with self.repo.lock:
            self._pending.discard(blob_id)

    def _stored(self, raw: int, stored: int, full: PackWriter | None) -> None:
        """Count a blob stored; upload the pack it filled."""
        with self.repo.lock:
            self.stats.blobs_new += 1
            self.stats.bytes_new += raw
            self.stats.bytes_stored += stored
        if full is not None:
            self._submit(full)

    def _claim(self, blob_id: bytes, force: bool = False) -> bool:
        """Whether the caller must store ``blob_id`` (it is then pending); holds the repository lock."""
        if blob_id in self._pending:
            return False
        if blob_id in self.repo.index and not force:
            if self._reusable(blob_id):
                if self.retain_until is not None:
                    self._note_reused(blob_id)
                return False
            self._rewritten.add(blob_id)  # its pack's lock ends too soon: stored again, once
        self._pending.add(blob_id)
        return True

    def reserve(self, blob_ids: list[bytes]) -> list[bool]:
        """For a pack assembled elsewhere (``procworker``): which of ``blob_ids`` to store, in one
        lock. Each one claimed stays pending until ``adopt_pack`` uploaded its pack; a process
        that dies holding some must ``fail`` the session, since files may already name them."""
        self._raise_if_failed()
        with self.repo.lock:
            return [self._claim(blob_id) for blob_id in blob_ids]

    def new_sealer(self) -> tuple[bytes, bytes]:
        """The AES key and prelude for the next pack assembled elsewhere (format 3: a fresh data
        key wrapped for the server; older formats: the master key and no prelude)."""
        sealer = self.repo.keyring.new_pack_sealer()
        return sealer.crypter.key.encryption, sealer.prelude

    def adopt_pack(self, pack_id: str, path: str, entries: list[BlobEntry], md5: bytes | None = None) -> None:
        """Upload a finished pack staged at ``path`` by another process from blobs ``reserve``
        gave it (the upload consumes the file; ``md5`` its digest, see ``pack_md5``); waits while
        too many packs are in flight."""
        with self.repo.lock:
            self._staged.add(path)
            self.stats.blobs_new += len(entries)
            self.stats.bytes_new += sum(entry.raw_length for entry in entries)
            self.stats.bytes_stored += sum(entry.length for entry in entries)
        self._slots.acquire()
        with self._session_fails():
            try:
                pack_id = self.repo.writer_prefix + pack_id
                future = self._pool.submit(self._upload, pack_id, path, entries, md5)
            except BaseException:
                self._slots.release()
                raise
        with self.repo.lock:
            self._futures = [f for f in self._futures if not f.done()] + [future]

    def fail(self, exc: BaseException) -> None:
        """End the session with ``exc`` as it is: every later ``save``, ``reserve`` and ``flush``
        raises it (the first failure recorded stays)."""
        with self.repo.lock:
            self._error = self._error or exc

    def stored(self, blob_id: bytes) -> bool:
        """The blob is indexed or being stored: ``save`` would not encode it (a hint: ``save``
        decides again, under the lock, e.g. for a pack whose lock ends too soon)."""
        with self.repo.lock:
            return blob_id in self._pending or blob_id in self.repo.index

    def reuse(self, blob_ids: list[bytes]) -> bool:
        """Blobs the backup references without saving them (files the cache says are unchanged).

        ``False``: one of them lies in a pack whose lock ends too soon (generations): the caller
        reads the file again so that ``save`` stores it anew.
        """
        if self.retain_until is None:
            return True
        with self.repo.lock:
            if not all(self._reusable(blob_id) for blob_id in blob_ids):
                return False
            for blob_id in blob_ids:
                self._note_reused(blob_id)
        return True

    def _reusable(self, blob_id: bytes) -> bool:
        """Its pack stays locked as long as this restore point (caller holds the repository lock)."""
        if self.horizon is None or self.retain_until is None or blob_id in self._rewritten:
            return True
        loc = self.repo.index.get(blob_id)
        if loc is None:
            return False
        return self.horizon.covers(loc.pack_id, self.repo.index.written.get(loc.pack_id), self.retain_until)

    def _note_reused(self, blob_id: bytes) -> None:
        if self.horizon is not None:  # generations: no per-pack extension
            return
        loc = self.repo.index.get(blob_id)  # caller holds the repository lock
        if loc is not None:
            self._reused_packs.add(loc.pack_id)

    def _extend_retention(self) -> None:
        """Lock every reused pack at least as long as this backup's own objects.

        Without it, an older pack's shorter lock could end while this restore point still needs
        it. Only packs, not the older index files listing them: their headers rebuild the index.
        """
        until = self.retain_until
        packs = sorted(self._reused_packs - self._written_packs)
        if until is None or not packs:
            return

        def extend(pack_id: str) -> bool:
            try:
                self.repo.store.extend_retention(pack_key(pack_id), until)
            except PermissionDeniedError:
                return False
            return True

        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="ck-retain") as pool:
            self.stats.locks_refused += sum(not done for done in pool.map(extend, packs))
        if self.stats.locks_refused:
            log.warning(
                "%d reused pack(s) not locked longer: this credential may not", self.stats.locks_refused
            )

    def _submit(self, pack: PackWriter) -> None:
        self._slots.acquire()  # backpressure: producers wait while too many packs are in flight
        # A pack that is not finished loses its blobs: files already handed them must not commit.
        with self._session_fails():
            try:
                pack_id, path, entries = pack.finish()
                pack_id = self.repo.writer_prefix + pack_id  # a writer's packs live in its namespace
                with self.repo.lock:
                    self._staged.add(path)
                future = self._pool.submit(self._upload, pack_id, path, entries, pack.md5)
            except BaseException:
                pack.discard()
                self._slots.release()
                raise
        with self.repo.lock:
            self._futures = [f for f in self._futures if not f.done()] + [future]

    def _upload(self, pack_id: str, path: str, entries: list[BlobEntry], md5: bytes | None) -> None:
        try:
            with self._session_fails():
                self._upload_pack(pack_id, path, entries, md5)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # put_file consumes it; this only matters when it failed early
            with self.repo.lock:
                self._staged.discard(path)
            self._slots.release()

    def _upload_pack(self, pack_id: str, path: str, entries: list[BlobEntry], md5: bytes | None) -> None:
        """Upload one finished pack, index it, and write an index file every few packs."""
        size = os.path.getsize(path)
        with self._limiter.slot(size) if self._limiter else contextlib.nullcontext():
            written = int(self._now().timestamp())  # before the upload: the store's lock starts later
            # Create-only: an agent may not replace what is stored (S3 session policy). A key that
            # exists is a retried upload that had landed: the id is the hash of these very bytes.
            with contextlib.suppress(ObjectExistsError):
                key = pack_key(pack_id)
                self.repo.store.put_file(key, path, if_absent=True, retain_until=self.lock_until, md5=md5)
        step("backup:pack-uploaded")
        write_index = False
        records = pack_records(entries)
        with self.repo.lock:
            if self.horizon is not None:
                self._written_at[pack_id] = written
            self.repo.index.add_pack(pack_id, entries, self._written_at.get(pack_id))
            for entry in entries:
                self._pending.discard(entry.id)
            self._unindexed[pack_id] = records
            self._written_packs.add(pack_id)
            self.stats.bytes_uploaded += size
            self.stats.packs += 1
            write_index = len(self._unindexed) >= self._index_every
        if write_index:
            self._write_index()

    def _write_index(self, *, refresh: bool = True) -> None:
        """Index the packs uploaded since the last index file; then refresh the session marker,
        unless the session ends now (``refresh=False``: the final flush, whose commit checks the
        lease again, and an abort): that refresh was three requests, a HEAD, a PUT and a DELETE."""
        with self.repo.lock:
            packs, self._unindexed = self._unindexed, {}
        if not packs:
            return
        # An expired session's packs may already be marked as leftovers and swept: naming them in
        # an index file would let later backups deduplicate against deleted packs.
        self._check_alive()
        key = new_index_key(self.repo.writer_prefix)
        sealed = encode_index_file(self.repo.crypter, packs, self._written_at)
        mac_key = self.repo.writer_key  # format 3 with a writer key: proves this writer wrote it
        body = add_mac(mac_key, key, sealed) if mac_key else sealed
        with store_writes(self.repo.store):
            self.repo.store.put(key, body, if_absent=True, retain_until=self.lock_until)
        step("backup:index-written")
        self.repo.index_file_written(key, body)
        with self.repo.lock:
            self._written_index.append(key)
        if refresh:
            self.heartbeat()

    @contextlib.contextmanager
    def _session_fails(self) -> Iterator[None]:
        """A failure inside ends the session: it is recorded (every later ``save`` raises it, so no
        file commits whose blobs went into a pack that never landed), and a write the store or the
        staging folder refused is raised as ``RepositoryWriteError``."""
        try:
            yield
        except BaseException as exc:
            self._raise_recorded(exc)

    def _record_failure(self, exc: BaseException) -> BaseException:
        """Record ``exc`` as the session's failure (the first one stays) and return what to raise."""
        error = as_write_error(self.repo.store, exc)
        with self.repo.lock:
            self._error = self._error or error
        return error

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # -- completion ------------------------------------------------------------------------

    def flush(self, tick: Callable[[], None] | None = None) -> None:
        """Upload partial packs, wait for every upload, write the remaining index: all durable after.

        ``tick`` is called about every quarter second while uploads are still running (progress
        for a backup whose last packs take long to go up, e.g. under a bandwidth limit).
        """
        for blob_type in (DATA, TREE):
            with self._pack_locks[blob_type]:
                pack, self._packs[blob_type] = self._packs[blob_type], None
                if pack is not None:  # a data key seals one pack only
                    self._sealers[blob_type] = self.repo.keyring.new_pack_sealer()
            if pack is not None and len(pack):
                self._submit(pack)
            elif pack is not None:
                pack.discard()
        with self.repo.lock:
            futures = list(self._futures)
        for future in futures:
            while True:
                try:
                    future.result(timeout=0.25 if tick else None)
                    break
                except FutureTimeout:
                    if tick:
                        tick()
        self._raise_if_failed()
        self._write_index(refresh=False)
        self._extend_retention()
        step("backup:flushed")

    def close(self, tick: Callable[[], None] | None = None) -> None:
        """Flush and end the session (remove the marker) without committing a manifest."""
        if self._closed:
            return
        try:
            self.flush(tick)
        except BaseException:
            self.abort()  # keeps what was uploaded reusable and removes staged packs
            raise
        self._closed = True
        self._stop.set()
        self._pool.shutdown(wait=True)
        self._end_session()

    def commit(self, write_manifest: Callable[[], None]) -> None:
        """After ``flush``: store the manifest while the session still holds its lease, then end it.

        The marker outlives the manifest write, so a prune that no longer sees the session also
        sees the restore point (and keeps what it uses). A session that lost its lease writes no
        manifest: ``SessionExpiredError``.
        """
        try:
            self._raise_if_failed()
            self._check_alive()
            write_manifest()
        except BaseException:
            self.abort()
            raise
        step("backup:snapshot-written")
        self._closed = True
        self._stop.set()
        self._pool.shutdown(wait=True)
        try:
            self.check_lease()
        except SessionExpiredError as exc:  # the manifest write itself outlasted the lease
            raise SessionExpiredError(
                f"the restore point was stored only after the session lease ran out ({exc.message}): "
                "it may reference packs a prune removed",
                hint="run `cloudkeep repository check`, then the backup again",
            ) from None
        finally:
            self._end_session()

    def abort(self) -> None:
        """Stop without committing: uploaded packs stay (indexed ones are reused by the next run)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._discard_staged()
        with contextlib.suppress(
            Exception
        ):  # keep what was uploaded reusable (refused once the lease is lost)
            self._write_index(refresh=False)
        with contextlib.suppress(Exception):
            self._remove_markers()

    def _discard_staged(self) -> None:
        """Remove staging files nobody will upload: open packs and cancelled uploads."""
        for blob_type in (DATA, TREE):
            with self._pack_locks[blob_type]:
                pack, self._packs[blob_type] = self._packs[blob_type], None
            if pack is not None:
                pack.discard()
        with self.repo.lock:
            paths, self._staged = list(self._staged), set()
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
