"""Restore-point manifests of every writer: store one, find one by id or prefix, read them all.

Split from ``repository.py`` (a mixin of ``Repository``, like ``FileContent`` of the archiver):
the manifests' keys, where each one lives (the root layout or a writer's namespace), and the
record of those that cannot be read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from cloudkeep.compat import zip_strict
from cloudkeep.errors import IntegrityError, NotFoundError
from cloudkeep.repo.confidential import KeyRing
from cloudkeep.repo.layout import CONTENT_ADDRESSED_MANIFESTS, WRITERS_PREFIX, RepoConfig
from cloudkeep.repo.snapshot import MANIFEST_VERSION, SNAPSHOT_PREFIX, Snapshot, is_snapshot_id
from cloudkeep.storage.base import ObjectInfo, ObjectNotFoundError, ObjectStore, store_writes


class RepositoryManifests:
    """The manifest operations of ``Repository`` (the state below is the repository's)."""

    store: ObjectStore
    writer_prefix: str
    keyring: KeyRing
    config: RepoConfig
    lock: threading.RLock
    io_threads: int
    _snapshot_keys: dict[str, str]
    unreadable_snapshots: dict[str, str]

    def writer_prefixes(self) -> tuple[str, ...]:
        """Every writer namespace (``writers/<name>/``), found by a delimiter listing (never data/)."""
        return self.store.list_folders(WRITERS_PREFIX)

    def list_everywhere(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` in the root layout and in every writer's namespace."""
        yield from self.store.list(prefix)
        for writer in self.writer_prefixes():
            yield from self.store.list(writer + prefix)

    def save_snapshot(self, snapshot: Snapshot, *, lock: bool = True) -> None:
        """Store a new manifest under its content id, which becomes ``snapshot.id``.

        ``lock=False``: the store's default retention locks it (immutability by generations), so
        the writer asks for no lock of its own.
        """
        snapshot_id, sealed = self.keyring.seal_manifest(snapshot)
        key = self.writer_prefix + SNAPSHOT_PREFIX + snapshot_id
        with store_writes(self.store):
            self.store.put(key, sealed, if_absent=True, retain_until=snapshot.retain_until if lock else None)
        snapshot.id, snapshot.digest, snapshot.version = snapshot_id, snapshot_id, MANIFEST_VERSION
        with self.lock:
            self._snapshot_keys[snapshot_id] = key

    def read_snapshot(self, key: str) -> Snapshot:
        """The manifest stored at ``key``, proven to belong under its id; ``IntegrityError`` naming it if not.

        Version 1 manifests (ids not bound to content) are read only in repositories created
        before format 2; in a newer one such an object was not written by cloudkeep.
        """
        legacy = self.config.created_version < CONTENT_ADDRESSED_MANIFESTS
        snapshot = self.keyring.open_manifest(key, self.store.get(key), allow_legacy=legacy)
        with self.lock:  # later reads by id (restore after a check) use this very object
            self._snapshot_keys[snapshot.id] = key
        return snapshot

    def _list_snapshot_keys(self) -> dict[str, str]:
        keys: dict[str, str] = {}
        for info in self.list_everywhere(SNAPSHOT_PREFIX):
            snapshot_id = info.key.rsplit("/", 1)[-1]
            # One id in two namespaces is a copy; prefer this writer's own (the one it may forget).
            if snapshot_id not in keys or (self.writer_prefix and info.key.startswith(self.writer_prefix)):
                keys[snapshot_id] = info.key
        with self.lock:
            self._snapshot_keys = keys
        return keys

    def snapshot_ids(self) -> list[str]:
        """Restore points of every writer, by the names their manifests are stored under."""
        return list(self._list_snapshot_keys())

    def snapshot_key(self, snapshot_id: str) -> str:
        """Where a restore point's manifest lives (root layout or a writer's namespace)."""
        with self.lock:
            key = self._snapshot_keys.get(snapshot_id)
        if key is None:
            key = self._list_snapshot_keys().get(snapshot_id)
        if key is None:
            raise NotFoundError(f"restore point {snapshot_id} does not exist", hint="list restore points")
        return key

    def owns_snapshot(self, snapshot_id: str) -> bool:
        """Whether this instance may delete the restore point (always, without a writer prefix)."""
        return self.snapshot_key(snapshot_id).startswith(self.writer_prefix)

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        """Load by full id or unique prefix (as shown by ``list_snapshots``), verified against its id."""
        if is_snapshot_id(snapshot_id):
            with self.lock:
                known = self._snapshot_keys.get(snapshot_id)
            own, root = self.writer_prefix + SNAPSHOT_PREFIX + snapshot_id, SNAPSHOT_PREFIX + snapshot_id
            for key in dict.fromkeys([known] if known else [own, root]):
                try:
                    return self.read_snapshot(key)
                except ObjectNotFoundError:
                    pass
        matches = [sid for sid in self.snapshot_ids() if sid.startswith(snapshot_id)]
        if len(matches) != 1:
            what = "is ambiguous" if matches else "does not exist"
            raise NotFoundError(f"restore point {snapshot_id} {what}", hint="list restore points to pick one")
        return self.read_snapshot(self.snapshot_key(matches[0]))

    def snapshots(self) -> Iterator[Snapshot]:
        """Every readable restore point. A damaged or misplaced manifest is skipped, not fatal: it is
        recorded in ``unreadable_snapshots`` (key → reason), refreshed by each call, for `check`
        and for prune (which must not reclaim what an unreadable manifest may reference)."""
        keys = list(self._list_snapshot_keys().values())

        def fetch(key: str) -> Snapshot | str | None:
            try:
                return self.read_snapshot(key)
            except ObjectNotFoundError:
                return None  # forgotten while listing
            except IntegrityError as exc:
                return str(exc)

        found: list[Snapshot] = []
        unreadable: dict[str, str] = {}
        with ThreadPoolExecutor(max_workers=self.io_threads) as pool:
            for key, outcome in zip_strict(keys, pool.map(fetch, keys)):
                if isinstance(outcome, Snapshot):
                    found.append(outcome)
                elif outcome is not None:
                    unreadable[key] = outcome
        with self.lock:
            self.unreadable_snapshots = unreadable
        return iter(found)
