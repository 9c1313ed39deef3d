"""Prune: reclaim space without a global lock, safe against backups running at the same time.

Two phases, at least ``grace`` apart (normally two prune runs):

1. **Mark.** Compute the blobs every restore point uses. Packs with no used blob, and packs
   left unindexed by interrupted backups, are *marked* (``prune/<id>`` lists them). Packs that
   are mostly unused are *repacked*: their used blobs are copied into new packs, then the old pack
   is marked. Marked packs stay readable, but new backups never deduplicate against them.
2. **Sweep** (a later run, once the mark is older than ``grace`` and no backup session that
   started before the mark is still alive): re-read the restore points — a backup that started
   before the mark may have committed one that uses a marked blob — and delete only packs whose
   used blobs all exist elsewhere. Then write a consolidated index and delete the index files it
   replaces.

Packs under retention (object lock) are never deleted or repacked. Backups announce themselves
with ``sessions/<id>`` markers refreshed every few minutes; a marker not refreshed within
``grace`` belongs to a crashed backup and is ignored (and removed).
"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cloudkeep.errors import CloudkeepError
from cloudkeep.repo.index import INDEX_PREFIX, encode_index_file, new_index_key
from cloudkeep.repo.pack import BlobEntry, pack_id_from_key, pack_key
from cloudkeep.repo.repository import PRUNE_PREFIX, SESSIONS_PREFIX, WRITERS_PREFIX, Repository
from cloudkeep.repo.writer import BlobWriter
from cloudkeep.storage.base import ObjectInfo, ObjectLockedError


@dataclass
class PruneResult:
    packs_marked: int = 0
    packs_repacked: int = 0
    packs_deleted: int = 0
    packs_kept_locked: int = 0
    packs_resurrected: int = 0
    bytes_freed: int = 0
    blobs_repacked: int = 0
    marks_pending: int = 0  # marks younger than grace (or blocked by a running backup)
    warnings: list[str] = field(default_factory=list)


def used_blobs(repo: Repository) -> set[bytes]:
    """Every blob (trees and data) any restore point references."""
    used: set[bytes] = set()
    for snap in repo.snapshots():
        root = bytes.fromhex(snap.tree)
        if root in used:
            continue
        used.add(root)
        stack = [root]
        while stack:
            for node in repo.load_tree(stack.pop()):
                used.update(node.content)
                if node.subtree is not None and node.subtree not in used:
                    used.add(node.subtree)
                    stack.append(node.subtree)
    return used


def _live_sessions(repo: Repository, now: datetime, grace: timedelta, result: PruneResult) -> list[datetime]:
    """Start times of backups still running; stale markers (crashed backups) are removed."""
    starts: list[datetime] = []
    for info in repo.list_everywhere(SESSIONS_PREFIX):
        try:
            body = repo.read_marker(info.key)
        except CloudkeepError:
            continue
        if now - datetime.fromisoformat(body["seen"]) > grace:
            try:
                repo.store.delete(info.key)
            except CloudkeepError as exc:
                result.warnings.append(f"cannot remove stale session marker {info.key}: {exc}")
            continue
        starts.append(datetime.fromisoformat(body["started"]))
    return starts


def prune(
    repo: Repository,
    *,
    grace: timedelta = timedelta(hours=1),
    now: datetime | None = None,
    repack_below: float = 0.5,
) -> PruneResult:
    repo.require_full_access("prune")
    now = now or datetime.now(UTC)
    result = PruneResult()
    repo.load_index()
    sessions = _live_sessions(repo, now, grace, result)
    index_files = set(repo.index_files)
    used = used_blobs(repo)
    stored = {pack_id_from_key(info.key): info for info in repo.list_everywhere("data/")}
    deleted = _sweep(repo, now, grace, sessions, used, stored, result)
    if deleted:
        repo.doomed.remove_packs(deleted)
        repo.index.remove_packs(deleted)
        _consolidate_index(repo, index_files)
    _mark(repo, now, used, stored, deleted, repack_below, result)
    repo.load_index()
    return result


def _sweep(
    repo: Repository,
    now: datetime,
    grace: timedelta,
    sessions: list[datetime],
    used: set[bytes],
    stored: dict[str, ObjectInfo],
    result: PruneResult,
) -> set[str]:
    deleted: set[str] = set()
    for info in list(repo.store.list(PRUNE_PREFIX)):
        mark = repo.read_marker(info.key)
        marked_at = datetime.fromisoformat(mark["time"])
        if now - marked_at < grace or any(start <= marked_at for start in sessions):
            result.marks_pending += 1
            continue
        kept: list[str] = []
        for pack_id in mark["packs"]:
            entries = repo.doomed.packs.get(pack_id, [])
            needed = [e.id for e in entries if e.id in used]
            if any(b not in repo.index for b in needed):
                result.packs_resurrected += 1  # a backup that started before the mark still uses it
                continue
            try:
                repo.store.delete(pack_key(pack_id))
            except ObjectLockedError:
                result.packs_kept_locked += 1
                kept.append(pack_id)
                continue
            deleted.add(pack_id)
            result.packs_deleted += 1
            result.bytes_freed += stored[pack_id].size if pack_id in stored else 0
        if kept:  # locked packs: try again at a later prune
            repo.write_marker(PRUNE_PREFIX + secrets.token_hex(16), {"time": mark["time"], "packs": kept})
        repo.store.delete(info.key)
    return deleted


def _consolidate_index(repo: Repository, replaced: set[str]) -> None:
    """One index file for every surviving pack, then remove the files it supersedes."""
    packs: dict[str, list[BlobEntry]] = {**repo.doomed.packs, **repo.index.packs}
    repo.store.put(new_index_key(), encode_index_file(repo.crypter, packs))
    for key in replaced:  # root and writers' index files alike (prune runs with full access)
        if key.startswith(INDEX_PREFIX) or (key.startswith(WRITERS_PREFIX) and f"/{INDEX_PREFIX}" in key):
            repo.store.delete(key)


def _mark(
    repo: Repository,
    now: datetime,
    used: set[bytes],
    stored: dict[str, ObjectInfo],
    deleted: set[str],
    repack_below: float,
    result: PruneResult,
) -> None:
    indexed = set(repo.index.packs) | set(repo.doomed.packs) | repo.doomed_packs()
    to_mark: list[str] = []
    to_repack: list[str] = []
    for pack_id, entries in repo.index.packs.items():
        if _locked(stored.get(pack_id), now):
            continue
        used_bytes = sum(e.length for e in entries if e.id in used)
        total = sum(e.length for e in entries) or 1
        if used_bytes == 0:
            to_mark.append(pack_id)
        elif used_bytes / total < repack_below:
            to_repack.append(pack_id)
    for pack_id, info in stored.items():  # left by interrupted backups and never indexed
        if pack_id not in indexed and pack_id not in deleted and not _locked(info, now):
            to_mark.append(pack_id)
    if to_repack:
        result.blobs_repacked = _repack(repo, to_repack, used)
        result.packs_repacked = len(to_repack)
        to_mark.extend(to_repack)
    if to_mark:
        repo.write_marker(
            PRUNE_PREFIX + secrets.token_hex(16), {"time": now.isoformat(), "packs": sorted(to_mark)}
        )
        result.packs_marked = len(to_mark)


def _locked(info: ObjectInfo | None, now: datetime) -> bool:
    until = info.retain_until if info is not None else None
    return until is not None and until > now


def _repack(repo: Repository, pack_ids: list[str], used: set[bytes]) -> int:
    """Copy the used blobs of ``pack_ids`` into new packs (indexed before the old ones are marked)."""
    copied = 0
    with BlobWriter(repo, hostname="prune") as writer:

        def copy(pack_id: str) -> int:
            entries = [e for e in repo.index.packs[pack_id] if e.id in used]
            body = repo.store.get(pack_key(pack_id))
            for entry in entries:
                data = repo.decode_blob(
                    entry,
                    pack_id,
                    memoryview(body)[entry.offset : entry.offset + entry.length],
                    reuse_buffer=True,
                )
                writer.save(entry.type, data, entry.id, force=True)
            return len(entries)

        with ThreadPoolExecutor(max_workers=2) as pool:
            copied = sum(pool.map(copy, pack_ids))
    return copied
