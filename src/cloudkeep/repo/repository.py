"""One opened repository over an ``ObjectStore``: keys, index, prune markers, blobs and manifests.

What the repository looks like in the store (layout, the sealed config, writer namespaces) is
``cloudkeep.repo.layout``; this module is the runtime over it — caches, the loaded index, reading
blobs and trees, and the restore-point manifests of every writer.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, overload

from cloudkeep.compat import UTC
from cloudkeep.errors import (
    ConflictError,
    IntegrityError,
    NotFoundError,
    PermissionDeniedError,
)
from cloudkeep.repo.chunker import ChunkerParams
from cloudkeep.repo.confidential import (
    CONFIDENTIAL_FORMAT,
    CONFIDENTIAL_KEY,
    PACK_PRELUDE_SIZE,
    ConfidentialKeys,
    KeyRing,
    WriterBundle,
    open_confidential,
)
from cloudkeep.repo.crypto import Crypter, KdfParams, MasterKey
from cloudkeep.repo.index import Index, Location, RawEntry, read_index_file
from cloudkeep.repo.indexcache import IndexCache
from cloudkeep.repo.indexload import Listing, doomed_packs, list_for_load, load_index, refresh_doomed
from cloudkeep.repo.keys import KEYS_PREFIX, open_with_password, remembered_key, write_key_file
from cloudkeep.repo.layout import (
    CONFIG_KEY,
    DEFAULT_PACK_SIZE,
    FORMAT_VERSION,
    MARKER_AAD,
    RepoConfig,
    check_writer_prefix,
    open_config,
    seal_config,
)
from cloudkeep.repo.manifests import RepositoryManifests
from cloudkeep.repo.pack import BlobEntry, SealedBlob, open_blob, pack_key
from cloudkeep.repo.tree import MALFORMED, Node, iter_tree_blob
from cloudkeep.repo.vouch import vouch_public_key
from cloudkeep.repo.writermac import split_mac, writer_key
from cloudkeep.storage.base import ObjectInfo, ObjectNotFoundError, ObjectStore, store_writes

log = logging.getLogger(__name__)

# Trees kept decoded for the next look-up (browsing walks the same top folders again and again),
# bounded by count and by nodes: a folder can hold 100,000 files, and a count alone let a walk over
# a large machine (prune, check, a restore's plan) keep every node of 4096 trees (~0.5 KiB each).
TREE_CACHE_TREES = 4096
TREE_CACHE_NODES = 65_536


class Repository(RepositoryManifests):
    """An opened repository. Thread-safe for the operations the engine uses concurrently."""

    def __init__(
        self,
        store: ObjectStore,
        master: MasterKey | None,
        key_name: str,
        config: RepoConfig,
        *,
        writer_prefix: str | None = None,
        keys: ConfidentialKeys | None = None,
        id_key: bytes | None = None,
    ) -> None:
        self.store = store
        # Every object this instance writes or deletes goes under this prefix ("" = the root layout).
        self.writer_prefix = check_writer_prefix(writer_prefix)
        self.master = master  # None on a machine holding a format 3 writer bundle
        self.key_name = key_name
        self.config = config
        self._set_keys(keys, id_key or (master.id_key if master else b""))
        self.lock = threading.RLock()
        self.index = Index()  # blobs usable for dedup (excludes packs marked for deletion)
        self.doomed = Index()  # blobs in packs prune has marked: readable, never deduplicated against
        # Other writers' packs the server has not vouched for: readable, never deduplicated against
        # (only where ``restricts_dedup``: repo/vouch.py).
        self.foreign = Index()
        self.unverified_vouches: dict[str, str] = {}  # vouched/ files not signed by the server: key → why
        # Writer-namespace index files whose writer MAC does not verify (repo/writermac.py): key → why.
        self.unauthenticated_index_files: dict[str, str] = {}
        self.index_files: set[str] = set()
        # Index files kept on this machine between runs (``use_index_cache``); None: always download.
        self.index_cache: IndexCache | None = None
        self.index_loaded_at = datetime.now(UTC)
        self._pack_cache: OrderedDict[str, bytes] = OrderedDict()
        self._pack_cache_bytes = 0
        self._tree_cache: OrderedDict[bytes, list[Node]] = OrderedDict()
        self._tree_cache_nodes = 0  # nodes in ``_tree_cache``, bounded by ``TREE_CACHE_NODES``
        self._snapshot_keys: dict[str, str] = {}
        self.unreadable_index_files: dict[str, str] = {}  # key → why, from the last load_index
        self.unreadable_markers: dict[str, str] = {}  # prune/ markers that cannot be read: key → why
        self.unreadable_snapshots: dict[str, str] = {}  # manifest key → why, from the last snapshots()
        self.io_threads = 8

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        store: ObjectStore,
        password: str,
        *,
        pack_size: int = DEFAULT_PACK_SIZE,
        compression_level: int = 3,
        kdf: KdfParams | None = None,
        chunker: ChunkerParams | None = None,
        version: int = FORMAT_VERSION,
        cache_dir: Path | None = None,
    ) -> Repository:
        """Initialise a new repository; ``ConflictError`` if the store already holds one.

        ``cache_dir``: where this machine's later opens look for the key file that opened last
        time (``open``): the one written here is kept there, so the first backup after creating a
        repository on a remote store does not wait for the store before deriving its key (on S3,
        ~0.2 s of a first backup's start: the client built, then the key file listed and fetched)."""
        if store.exists(CONFIG_KEY):
            raise ConflictError(
                f"{store.describe()} already holds a cloudkeep repository", hint="open it instead"
            )
        master = MasterKey.generate()
        chunker = chunker or ChunkerParams(seed=secrets.randbits(63))
        config = RepoConfig(secrets.token_hex(16), chunker, pack_size, compression_level, version)
        with store_writes(store):  # a store that refuses writes fails here, naming itself
            key_name = write_key_file(
                store, master, password, kdf or KdfParams(), remember=remembered_key(store, cache_dir)
            )
        keys = ConfidentialKeys.generate() if version >= CONFIDENTIAL_FORMAT else None
        try:
            with store_writes(store):
                if keys is not None:  # before the config: a repository exists once its config does
                    # create-only: two racing initialisers must not leave a config and another's keys
                    store.put(CONFIDENTIAL_KEY, keys.seal(master), if_absent=True)
                store.put(CONFIG_KEY, seal_config(master, config), if_absent=True)
        except ConflictError:
            store.delete(key_name)  # lost the race to another initialiser
            raise ConflictError(f"{store.describe()} already holds a cloudkeep repository") from None
        return cls(store, master, key_name, config, keys=keys)

    @classmethod
    def open(
        cls,
        store: ObjectStore,
        password: str,
        *,
        writer_prefix: str | None = None,
        load_index: bool = True,
        cache_dir: Path | None = None,
    ) -> Repository:
        """Open with any of the repository's passwords; ``AuthenticationError`` if none matches.

        ``load_index=False``: manifests only, by key (the server's check of a reported backup).

        ``writer_prefix`` (``writers/<name>/``) confines everything this instance writes or deletes
        to that namespace, so credentials scoped to it suffice; reads still see every writer.
        ``cache_dir``: where this machine keeps index files between runs (``use_index_cache``).

        The config, the key material and the index listing are fetched while the password's key
        is derived (scrypt, the costly part): open takes the longer of the two, not their sum. With
        ``cache_dir`` on a remote store, the key file that opened last time is kept there and its
        derivation starts at once, beside the store's client being built (``keys.py``).
        """
        with ThreadPoolExecutor(max_workers=4) as pool:
            unlocked = pool.submit(open_with_password, store, password, remembered_key(store, cache_dir))
            sealed_config = pool.submit(_get_or_none, store, CONFIG_KEY)
            sealed_keys = pool.submit(_get_or_none, store, CONFIDENTIAL_KEY)
            listing = pool.submit(list_for_load, store) if load_index else None
            key_name, master = unlocked.result()
            sealed = sealed_config.result()
            if sealed is None:
                raise NotFoundError(f"{store.describe()}: repository config is missing")
            config = open_config(master, sealed)
            keys = None
            if config.version >= CONFIDENTIAL_FORMAT:
                keys = open_confidential(store, master, sealed_keys.result())
            repo = cls(store, master, key_name, config, writer_prefix=writer_prefix, keys=keys)
            if listing is not None:
                repo.use_index_cache(cache_dir)
                repo.load_index(listing.result())
        return repo

    @classmethod
    def open_writer(
        cls, store: ObjectStore, bundle: WriterBundle, *, writer_prefix: str, cache_dir: Path | None = None
    ) -> Repository:
        """A machine's view of a format 3 repository: back up into ``writer_prefix`` and dedup
        against every writer, but decrypt nothing another writer stored (and no manifest or pack
        at all without keys the server grants for a restore, ``grant_keys``)."""
        config = RepoConfig.from_json(bundle.config)
        if config.version < CONFIDENTIAL_FORMAT or not writer_prefix:
            raise PermissionDeniedError("a writer bundle opens a format 3 repository for one writer prefix")
        keys = ConfidentialKeys(bundle.shared_key, bundle.public_key)
        repo = cls(store, None, "", config, writer_prefix=writer_prefix, keys=keys, id_key=bundle.id_key)
        repo.vouch_key = bundle.vouch_key or None
        repo.writer_key = bundle.writer_key or None  # None (older server): its namespace is trusted
        repo.use_index_cache(cache_dir)
        repo.load_index()
        return repo

    def use_index_cache(self, cache_dir: Path | None) -> None:
        """Keep index files under ``cache_dir/<repository id>/index`` between runs (remote stores
        only: a local folder is read as fast as the cache would be). ``repo/indexcache.py``."""
        if cache_dir is not None and self.store.remote:
            self.index_cache = IndexCache(Path(cache_dir) / self.id / "index")

    def index_file_written(self, key: str, data: bytes) -> None:
        """This instance stored an index file: it is loaded, and cached for the next run."""
        with self.lock:
            self.index_files.add(key)
        if self.index_cache is not None:
            self.index_cache.remember(key, data)

    def _set_keys(self, keys: ConfidentialKeys | None, id_key: bytes) -> None:
        self.keyring = KeyRing(self.config.id, self.config.compression_level, self.master, id_key, keys)
        private = keys.private_key if keys is not None else None
        self.vouch_key = vouch_public_key(private, self.config.id) if private is not None else None
        # This writer's index-file key (repo/writermac.py); a machine's comes from its bundle.
        self.writer_key: bytes | None = None
        if private is not None and self.writer_prefix:
            self.writer_key = writer_key(private, self.id, self.writer_prefix)
        # Index files and markers; blobs are opened with ``pack_crypter``, manifests by the key ring.
        self.crypter = self.keyring.shared

    def writer_bundle(self, writer_prefix: str | None = None) -> WriterBundle:
        """What a machine gets instead of the password (format 3; the server sends it sealed), with
        the key that authenticates ``writer_prefix``'s own index files (none without a prefix)."""
        keys = self.keyring.keys
        if keys is None or self.master is None:
            raise PermissionDeniedError("writer bundles exist for format 3 repositories, from the server")
        own_key = self.index_mac_key(check_writer_prefix(writer_prefix)) or b""
        return WriterBundle(
            self.config.to_json(),
            self.master.id_key,
            keys.shared_key,
            keys.public_key,
            self.vouch_key or b"",
            own_key,
        )

    def index_mac_key(self, writer_prefix: str) -> bytes | None:
        """The key of ``writer_prefix``'s index files: derived with the private key (server), this
        machine's own from its bundle, else ``None`` (its files are not authenticated)."""
        private = self.keyring.private_key
        if private is not None and writer_prefix:
            return writer_key(private, self.config.id, writer_prefix)
        return self.writer_key if writer_prefix == self.writer_prefix else None

    def adopt_confidential(self, config: RepoConfig, keys: ConfidentialKeys) -> None:
        """Switch this instance to format 3 after a migration (``repo.migrate``) rewrote the config."""
        self.config = config
        self._set_keys(keys, self._master().id_key)

    def grant_keys(self, grants: dict[str, bytes]) -> None:
        """Keys the server unwrapped for a restore: object key (pack or manifest) → content key."""
        self.keyring.grant(grants)

    def pack_crypter(self, pack_id: str, body: bytes | None = None) -> Crypter:
        """What opens a pack's blobs and header (``body``: the pack, if already fetched)."""

        def prelude() -> bytes:
            if body is not None:
                return body[:PACK_PRELUDE_SIZE]
            return self.store.get_range(pack_key(pack_id), 0, PACK_PRELUDE_SIZE)

        return self.keyring.pack_crypter(pack_id, prelude)

    def close(self) -> None:
        self.drop_tree_caches()

    def drop_tree_caches(self) -> None:
        """Let go of the tree packs and trees kept for the next look-up: a restore's plan is made
        (it reads each tree once), and its data was still read beside them (6 MiB of a node tree's
        55,000 entries, from S3)."""
        with self.lock:
            self._pack_cache.clear()
            self._pack_cache_bytes = 0
            self._tree_cache.clear()
            self._tree_cache_nodes = 0

    @property
    def id(self) -> str:
        return self.config.id

    # -- passwords -------------------------------------------------------------------------

    def add_password(self, new_password: str, *, kdf: KdfParams | None = None) -> None:
        write_key_file(self.store, self._master(), new_password, kdf or KdfParams())

    def _master(self) -> MasterKey:
        if self.master is None:
            raise PermissionDeniedError("a machine's writer bundle holds no repository key")
        return self.master

    def change_password(self, old: str, new: str, *, kdf: KdfParams | None = None) -> None:
        """Replace the key file ``old`` opens by one for ``new`` (new first, so a crash loses nothing)."""
        old_key, _ = open_with_password(self.store, old)
        new_key = write_key_file(self.store, self._master(), new, kdf or KdfParams())
        self.store.delete_or_hide(old_key)  # locked by a default retention: hidden (docs/format.md)
        if self.key_name == old_key:
            self.key_name = new_key

    def key_names(self) -> list[str]:
        return [info.key for info in self.store.list(KEYS_PREFIX)]

    # -- index -----------------------------------------------------------------------------

    @property
    def restricts_dedup(self) -> bool:
        """A machine on a format 3 repository reuses only its own entries and the server's vouched
        ones: another writer's index may lie (dedup poisoning, docs/security.md). Formats 1-2 give
        machines the password, which could sign anything, so there nothing changes until migrated."""
        return bool(self.writer_prefix) and self.keyring.confidential

    @property
    def scoped(self) -> bool:
        """True when this instance may write only its own namespace (no repository-wide deletes)."""
        return bool(self.writer_prefix)

    def require_full_access(self, what: str) -> None:
        """Repository-wide rewrites (prune, rebuild-index) need the full credential, not a writer's."""
        if self.scoped:
            raise PermissionDeniedError(
                f"{what} rewrites every writer's objects, but this repository was opened for "
                f"{self.writer_prefix!r} only",
                hint="run it as a maintenance task with the repository's full credential (no writer prefix)",
            )

    def load_index(self, listing: Listing | None = None) -> None:
        """(Re)load every index file, in parallel; packs marked by prune go to ``doomed``
        (``repo/indexload.py``; ``listing``: already listed by ``open``)."""
        load_index(self, listing)

    def read_index_file(
        self, key: str, data: bytes, written: dict[str, int] | None = None
    ) -> list[tuple[str, Iterable[RawEntry]]]:
        """Under the shared key, or the repository key for a file written before format 3.

        Packs' write times (index files v3, for generations) go into ``written`` when given.
        """
        data, _ = split_mac(data)  # the writer's MAC, checked by load_index where it matters
        crypters = self.keyring.shared_crypters()
        for crypter in crypters[:-1]:
            try:
                return read_index_file(crypter, key, data, written)
            except IntegrityError:
                continue
        return read_index_file(crypters[-1], key, data, written)

    def locate(self, blob_id: bytes) -> Location:
        with self.lock:
            loc = self.index.get(blob_id) or self.doomed.get(blob_id) or self.foreign.get(blob_id)
            if loc is not None and self.keyring.granted(loc.pack_id) is False:
                # A restore reads the copy the server granted (grants.py picks it): the blob may
                # also be in another pack (two machines stored it in one job).
                copies = (c for i in (self.index, self.doomed, self.foreign) for c in i.locations(blob_id))
                loc = next((c for c in copies if self.keyring.granted(c.pack_id)), loc)
        if loc is None:
            raise IntegrityError(
                f"blob {blob_id.hex()} is not in the index",
                hint="the index may be missing or damaged: run `cloudkeep repository check`, then "
                "`cloudkeep repository repair`",
            )
        return loc

    def pack_extent(self, pack_id: str) -> int:
        """Where the pack's last blob ends, as the indexes know it (0: none lists the pack)."""
        with self.lock:
            return max(index.extent(pack_id) for index in (self.index, self.doomed, self.foreign))

    def has_blob(self, blob_id: bytes) -> bool:
        with self.lock:
            return blob_id in self.index

    # -- markers ---------------------------------------------------------------------------

    def write_marker(self, key: str, body: dict[str, Any], *, if_absent: bool = False) -> None:
        sealed = self.crypter.encode(json.dumps(body).encode(), MARKER_AAD)
        with store_writes(self.store):
            self.store.put(key, sealed, if_absent=if_absent)

    def read_marker(self, key: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.keyring.open_shared(self.store.get(key), MARKER_AAD, key))
        return result

    def doomed_packs(self, markers: Iterable[ObjectInfo] | None = None) -> set[str]:
        """Packs listed by prune's markers (``markers``: already listed); ``repo/indexload.py``."""
        return doomed_packs(self, markers)

    def refresh_doomed(self) -> None:
        """Stop deduplicating against packs marked since the index was loaded (``repo/indexload.py``)."""
        refresh_doomed(self)

    # -- reading blobs ---------------------------------------------------------------------

    def _cached_pack(self, pack_id: str) -> bytes:
        with self.lock:
            body = self._pack_cache.get(pack_id)
            if body is not None:
                self._pack_cache.move_to_end(pack_id)
                return body
        body = self.store.get(pack_key(pack_id))
        with self.lock:
            self._pack_cache[pack_id] = body
            self._pack_cache_bytes += len(body)
            while self._pack_cache_bytes > 128 * 2**20 and len(self._pack_cache) > 1:
                _, old = self._pack_cache.popitem(last=False)
                self._pack_cache_bytes -= len(old)
        return body

    @overload
    def decode_blob(
        self,
        entry: BlobEntry,
        pack_id: str,
        sealed: bytes | memoryview,
        *,
        reuse_buffer: Literal[False] = False,
        crypter: Crypter | None = None,
    ) -> bytes: ...

    @overload
    def decode_blob(
        self,
        entry: BlobEntry,
        pack_id: str,
        sealed: bytes | memoryview,
        *,
        reuse_buffer: Literal[True],
        crypter: Crypter | None = None,
    ) -> bytes | memoryview: ...

    def decode_blob(
        self,
        entry: BlobEntry,
        pack_id: str,
        sealed: bytes | memoryview,
        *,
        reuse_buffer: bool = False,
        crypter: Crypter | None = None,
    ) -> bytes | memoryview:
        """Decrypt, decompress and verify one blob against its content id.

        ``reuse_buffer``: the result may live in this thread's reusable buffer, valid until the
        thread decodes again (restore and check use each blob at once). ``crypter``: the pack's,
        when the caller already has it (``pack_crypter``), saving a look-up per blob.
        """
        # the pack's crypter shares the master's id key: ids are checked with it
        return open_blob(
            crypter or self.pack_crypter(pack_id), entry, pack_id, sealed, reuse_buffer=reuse_buffer
        )

    def load_blob(self, blob_id: bytes) -> bytes:
        loc = self.locate(blob_id)
        return self.decode_blob(loc.entry, loc.pack_id, self._sealed(blob_id, loc))

    def _sealed(self, blob_id: bytes, loc: Location) -> bytes | memoryview:
        """A blob as its pack holds it (a tree's from its pack, read whole and kept a while)."""
        entry = loc.entry
        try:
            if entry.type == "tree":  # tree packs are small and read together: fetch them whole
                body = self._cached_pack(loc.pack_id)
                self.pack_crypter(loc.pack_id, body)  # its data key from the prelude already fetched
                sealed: bytes | memoryview = memoryview(body)[entry.offset : entry.offset + entry.length]
            else:
                sealed = self.store.get_range(pack_key(loc.pack_id), entry.offset, entry.length)
        except ObjectNotFoundError:
            raise IntegrityError(
                f"pack {loc.pack_id} holding blob {blob_id.hex()} is missing from storage",
                hint="run `cloudkeep repository check` to see which restore points are affected",
            ) from None
        return sealed

    def load_tree(self, tree_id: bytes, *, keep: bool = True) -> list[Node]:
        """A tree's nodes, decoded; ``keep=False``: not kept for the next look-up (a walk that
        reads each tree once: kept, a restore's plan of 55,000 small files held every node of the
        restore point to its end, ~25 MiB; bench/README.md, stop 42)."""
        with self.lock:
            nodes = self._tree_cache.get(tree_id)
            if nodes is not None:
                self._tree_cache.move_to_end(tree_id)
                return nodes
        try:
            nodes = list(iter_tree_blob(self._tree_blob(tree_id)))  # a large one never whole
        except MALFORMED as exc:
            raise _malformed(tree_id, exc) from None
        if not keep:
            return nodes
        with self.lock:
            # A tree past the bound is not kept: it would only push every other tree out.
            if tree_id not in self._tree_cache and len(nodes) <= TREE_CACHE_NODES:
                self._tree_cache[tree_id] = nodes
                self._tree_cache_nodes += len(nodes)
            while self._tree_cache_nodes > TREE_CACHE_NODES or len(self._tree_cache) > TREE_CACHE_TREES:
                self._tree_cache_nodes -= len(self._tree_cache.popitem(last=False)[1])
        return nodes

    def tree_nodes(self, tree_id: bytes) -> Iterator[Node]:
        """A tree's nodes one by one, parsed as they are taken and not kept (``iter_tree_blob``):
        a restore's plan of a large folder. The blob is read now (a missing pack raises here),
        decrypted and decompressed as it is parsed; a node that cannot be parsed raises
        ``IntegrityError`` where it comes, after the nodes before it; a blob that does not open or
        match its id, before any node (a large tree is read twice, the first time to check it)."""
        with self.lock:
            nodes = self._tree_cache.get(tree_id)
        if nodes is not None:
            return iter(nodes)
        return _parsed(tree_id, iter_tree_blob(self._tree_blob(tree_id)))

    def _tree_blob(self, tree_id: bytes) -> SealedBlob:
        loc = self.locate(tree_id)
        sealed = self._sealed(tree_id, loc)  # first: a tree's pack read whole gives the crypter its key
        return SealedBlob(self.pack_crypter(loc.pack_id), loc.entry, loc.pack_id, sealed)


def _get_or_none(store: ObjectStore, key: str) -> bytes | None:
    try:
        return store.get(key)
    except ObjectNotFoundError:
        return None


def _parsed(tree_id: bytes, nodes: Iterator[Node]) -> Iterator[Node]:
    try:
        yield from nodes
    except MALFORMED as exc:
        raise _malformed(tree_id, exc) from None


def _malformed(tree_id: bytes, exc: Exception) -> IntegrityError:
    """A tree that does not decode (a hand-made tree: wrong shapes), read whole or node by node."""
    return IntegrityError(f"tree {tree_id.hex()} is malformed ({exc})")
