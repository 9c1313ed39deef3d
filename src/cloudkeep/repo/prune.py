"""Prune: reclaim space without a global lock, safe against backups running at the same time.

Two phases, at least ``grace`` apart (normally two prune runs); docs/format.md ("Concurrency and
the prune protocol") states the invariant and why each step keeps it.

1. **Mark.** Compute the blobs every restore point uses. Packs with no used blob, and packs
   left unindexed by interrupted backups, are listed in a ``prune/<id>`` marker; mostly unused
   packs are repacked first. Once the marker is visible, the backup sessions then alive are
   recorded in it (*arming*): every later session sees the mark and never deduplicates against it.
2. **Sweep** (a later run), once the mark is older than ``grace`` and every session it recorded
   has ended or gone stale: re-read the restore points, keep ("resurrect") marked packs still
   needed, write one index without the packs about to go, delete the index files it replaces,
   and only then delete the packs and the marker. Index files therefore never name a deleted
   pack, and every step is idempotent: a killed prune is completed by the next one.

Prune refuses to run while a manifest or an index file cannot be read (it could not know what
they need), never deletes on a marker it cannot read, and holds the maintenance lock.
"""

from __future__ import annotations

import contextlib
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cloudkeep.compat import UTC
from cloudkeep.errors import CloudkeepError, ConfigurationError, IntegrityError
from cloudkeep.repo import writer as backup_session
from cloudkeep.repo.index import encode_index_file, new_index_key
from cloudkeep.repo.layout import PRUNE_PREFIX, SESSIONS_PREFIX
from cloudkeep.repo.lock import MaintenanceLock, last_refresh, maintenance_lock
from cloudkeep.repo.pack import BlobEntry, pack_id_from_key, pack_key
from cloudkeep.repo.repository import Repository
from cloudkeep.repo.steps import step
from cloudkeep.repo.writer import BlobWriter
from cloudkeep.storage.base import ObjectInfo, ObjectLockedError, ObjectNotFoundError, store_writes


def min_grace() -> timedelta:
    """Sessions stop writing ``SESSION_LEASE_S`` after their last refresh; grace is at least twice
    that, leaving as much again for requests still in flight and clock skew with the store."""
    return timedelta(seconds=2 * backup_session.SESSION_LEASE_S)


REPAIR_HINT = "run `cloudkeep repository repair <repository>` (see `cloudkeep repository check`)"


class PruneRefusedError(IntegrityError):
    """Prune cannot know what a damaged object needs, so it deletes nothing until it is repaired."""


@dataclass
class PruneResult:
    packs_marked: int = 0
    packs_repacked: int = 0
    packs_deleted: int = 0
    packs_kept_locked: int = 0
    packs_resurrected: int = 0
    bytes_freed: int = 0
    blobs_repacked: int = 0
    marks_pending: int = 0  # marks younger than grace, or waiting for a backup they recorded
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Mark:
    key: str
    time: datetime
    packs: list[str]
    sessions: list[str] | None  # None: written by a prune killed before arming it


def used_blobs(repo: Repository, only: set[str] | None = None) -> set[bytes]:
    """Every blob (trees and data) any readable restore point (of ``only``) references.

    ``PruneRefusedError`` when a tree cannot be loaded: what lies below it is unknown.
    """
    used: set[bytes] = set()
    for snap in repo.snapshots():
        if only is not None and snap.id not in only:
            continue
        root = bytes.fromhex(snap.tree)
        if root in used:
            continue
        used.add(root)
        stack = [root]
        while stack:
            tree_id = stack.pop()
            try:
                nodes = repo.load_tree(tree_id)
            except CloudkeepError as exc:
                raise PruneRefusedError(
                    f"restore point {snap.id}: tree {tree_id.hex()} cannot be read ({exc}); prune "
                    "deletes nothing while it cannot know what that restore point references",
                    hint=REPAIR_HINT,
                ) from None
            for node in nodes:
                used.update(node.content)
                if node.subtree is not None and node.subtree not in used:
                    used.add(node.subtree)
                    stack.append(node.subtree)
    return used


def prune(
    repo: Repository,
    *,
    grace: timedelta = timedelta(hours=1),
    now: datetime | None = None,
    repack_below: float = 0.5,
) -> PruneResult:
    repo.require_full_access("prune")
    if grace < min_grace():
        raise ConfigurationError(f"prune grace {grace} is shorter than twice the backup session lease")
    now = now or datetime.now(UTC)
    result = PruneResult()
    with maintenance_lock(repo, "prune", now=now, grace=grace) as lock:
        _step(lock, "prune:locked")
        # Which marks may be swept is decided before the index and the restore points are read:
        # a recorded session that ended wrote its index files and manifest before its marker went.
        ready = _ready_marks(repo, now, grace, result)
        # Restore points listed before the index is loaded have all their index files in it; one
        # committed later comes from a session that sees every mark or was recorded by it.
        listed = set(repo.snapshot_ids())
        repo.load_index()
        _refuse_if_damaged(repo.unreadable_index_files)
        used = used_blobs(repo, only=listed)
        _refuse_if_damaged(repo.unreadable_snapshots)
        # Listed after the index was loaded: every indexed pack was stored before its index file.
        stored = {pack_id_from_key(info.key): info for info in repo.list_everywhere("data/")}
        _step(lock, "prune:loaded")
        deleted = _sweep(repo, lock, ready, now, used, stored, result)
        _mark(repo, lock, now, used, stored, deleted, repack_below, result)
    repo.load_index()
    return result


def _step(lock: MaintenanceLock, name: str) -> None:
    lock.refresh()  # a long prune keeps the lock from looking abandoned
    step(name)


def _refuse_if_damaged(damaged: dict[str, str]) -> None:
    if damaged:
        names = ", ".join(sorted(damaged))
        raise PruneRefusedError(
            f"prune deletes nothing while these objects cannot be read (it cannot know what they "
            f"reference): {names}",
            hint=REPAIR_HINT,
        )


def _read_marks(repo: Repository, result: PruneResult) -> list[_Mark]:
    marks: list[_Mark] = []
    for info in repo.store.list(PRUNE_PREFIX):
        try:
            body = repo.read_marker(info.key)
            sessions = body.get("sessions")
            recorded = None if sessions is None else [str(s) for s in sessions]
            marks.append(_Mark(info.key, datetime.fromisoformat(body["time"]), list(body["packs"]), recorded))
        except ObjectNotFoundError:
            continue
        except (IntegrityError, ValueError, KeyError, TypeError) as exc:
            result.warnings.append(f"prune marker {info.key} cannot be read, its packs are kept: {exc}")
    return marks


def _live_sessions(repo: Repository, now: datetime, grace: timedelta, result: PruneResult) -> set[str]:
    """Backup sessions (named by their first marker's key) refreshed within ``grace``.

    A session is its first marker plus one marker per refresh (``.<n>``) and, once it ended without
    delete rights, ``.end``. Ended sessions and stale ones (crashed or paused backups, which no
    longer commit) are removed — first marker first, so a paused one cannot resume unnoticed.
    """
    live: set[str] = set()
    for name, infos in _sessions(repo).items():
        keys = sorted(info.key for info in infos)
        # First marker gone: removed by a prune (stale) or by the session itself (ended).
        status = _session_status(repo, name, infos, now, grace, result) if name in keys else "ended"
        if status == "live":
            live.add(name)
            continue
        try:
            for key in [name] + [k for k in keys if k != name]:
                repo.store.delete_or_hide(key)  # hidden where a default retention locks it
        except ObjectNotFoundError:
            continue
        except CloudkeepError as exc:
            result.warnings.append(f"cannot remove {status} session marker {name}: {exc}")
            if status == "stale":
                live.add(name)
    return live


def _sessions(repo: Repository) -> dict[str, list[ObjectInfo]]:
    grouped: dict[str, list[ObjectInfo]] = {}
    for info in repo.list_everywhere(SESSIONS_PREFIX):
        grouped.setdefault(backup_session.session_name(info.key), []).append(info)
    return grouped


def _session_status(
    repo: Repository, name: str, infos: list[ObjectInfo], now: datetime, grace: timedelta, result: PruneResult
) -> str:
    """``live``, ``stale`` or ``ended``, from the first marker, the newest refresh and any end marker."""
    first: dict[str, Any] | None = None
    with contextlib.suppress(IntegrityError, ValueError, ObjectNotFoundError):
        first = repo.read_marker(name)
    end_key = name + backup_session.END_SUFFIX
    if any(info.key == end_key for info in infos):
        try:
            secret = repo.read_marker(end_key).get("end")
        except (IntegrityError, ValueError, ObjectNotFoundError):
            secret = None
        expected = first.get("end_hash") if first is not None else None
        if isinstance(secret, str) and expected == backup_session.end_hash(secret):
            return "ended"
        result.warnings.append(f"ignoring session end marker {end_key}: it does not match its session")
    beats = [info for info in infos if info.key != end_key]
    newest = max(beats, key=lambda info: info.key)
    body: dict[str, Any] | None = first if newest.key == name else None
    if newest.key != name:
        with contextlib.suppress(IntegrityError, ValueError, ObjectNotFoundError):
            body = repo.read_marker(newest.key)
    seen = last_refresh(newest, body)
    return "live" if seen is None or now - seen <= grace else "stale"


def _session_keys(repo: Repository) -> set[str]:
    """Every session present, stale or not (recording a stale one only costs a wait)."""
    return set(_sessions(repo))


def _arm(repo: Repository, key: str, mark_time: datetime, packs: list[str], live: set[str]) -> None:
    repo.write_marker(key, {"time": mark_time.isoformat(), "packs": packs, "sessions": sorted(live)})


def _ready_marks(repo: Repository, now: datetime, grace: timedelta, result: PruneResult) -> list[_Mark]:
    live = _live_sessions(repo, now, grace, result)
    ready: list[_Mark] = []
    for mark in _read_marks(repo, result):
        if mark.sessions is None:  # its prune was killed before arming: arm now, the wait restarts
            _arm(repo, mark.key, now, mark.packs, _session_keys(repo))
            result.marks_pending += 1
        elif now - mark.time < grace or live.intersection(mark.sessions):
            result.marks_pending += 1
        else:
            ready.append(mark)
    return ready


def _sweep(
    repo: Repository,
    lock: MaintenanceLock,
    ready: list[_Mark],
    now: datetime,
    used: set[bytes],
    stored: dict[str, ObjectInfo],
    result: PruneResult,
) -> set[str]:
    if not ready:
        return set()
    doomed: set[str] = set()
    kept: set[str] = set()  # under retention: stay marked for a later prune
    for pack_id in {p for mark in ready for p in mark.packs}:
        if _locked(stored.get(pack_id), now):
            kept.add(pack_id)
            continue
        entries = repo.doomed.packs.get(pack_id) or []
        # Needed by a restore point committed by a session the mark recorded: keep the pack.
        if any(e.id in used and e.id not in repo.index for e in entries):
            result.packs_resurrected += 1
            continue
        doomed.add(pack_id)
    if doomed:
        _drop_from_index(repo, lock, doomed)
    deleted = _delete_packs(repo, doomed, kept, stored, result)
    _step(lock, "prune:packs-deleted")
    # Marks go last (a replacement for packs still locked is written first).
    for mark in ready:
        still = sorted(set(mark.packs) & kept)
        if still:
            _arm(repo, PRUNE_PREFIX + secrets.token_hex(16), mark.time, still, set())
        repo.store.delete_or_hide(mark.key)
    _step(lock, "prune:markers-removed")
    with repo.lock:
        repo.doomed.remove_packs(deleted)
        repo.index.remove_packs(deleted)
    return deleted


def _drop_from_index(repo: Repository, lock: MaintenanceLock, doomed: set[str]) -> None:
    """No index file may name a pack once it is gone: one index without them, then the old files."""
    old_files = set(repo.index_files)
    survivors: dict[str, list[BlobEntry]] = {
        pack_id: entries
        for pack_id, entries in [*repo.doomed.pack_entries(), *repo.index.pack_entries()]
        if pack_id not in doomed
    }
    new_file = new_index_key()
    lock.check()  # a prune taken over while paused must not write an index from its old view
    written = {**repo.doomed.written, **repo.index.written}  # packs' write times (generations) stay known
    with store_writes(repo.store):
        repo.store.put(new_file, encode_index_file(repo.crypter, survivors, written))
    _step(lock, "prune:index-consolidated")
    for key in sorted(old_files - {new_file}):  # every one was read (prune refuses otherwise)
        repo.store.delete_or_hide(key)
    repo.index_files = {new_file}
    _step(lock, "prune:old-index-removed")


def _delete_packs(
    repo: Repository, doomed: set[str], kept: set[str], stored: dict[str, ObjectInfo], result: PruneResult
) -> set[str]:
    deleted: set[str] = set()
    for pack_id in sorted(doomed):
        try:
            repo.store.delete(pack_key(pack_id))
        except ObjectLockedError:
            kept.add(pack_id)  # locked after we listed it; unindexed now, still marked
            continue
        deleted.add(pack_id)
        result.packs_deleted += 1
        result.bytes_freed += stored[pack_id].size if pack_id in stored else 0
    result.packs_kept_locked = len(kept)
    return deleted


def _mark(
    repo: Repository,
    lock: MaintenanceLock,
    now: datetime,
    used: set[bytes],
    stored: dict[str, ObjectInfo],
    deleted: set[str],
    repack_below: float,
    result: PruneResult,
) -> None:
    # Packs of an unreadable marker are in the live index: they are judged like any other.
    indexed = set(repo.index.packs) | set(repo.doomed.packs) | repo.doomed_packs()
    to_mark: list[str] = []
    to_repack: list[str] = []
    for pack_id, entries in repo.index.pack_entries():
        if _locked(stored.get(pack_id), now) or pack_id not in stored:
            continue  # a missing pack is damage for `check` and `repair index`, not garbage
        used_bytes = sum(e.length for e in entries if e.id in used)
        total = sum(e.length for e in entries) or 1
        if used_bytes == 0:
            to_mark.append(pack_id)
        elif used_bytes / total < repack_below:
            to_repack.append(pack_id)
    # Unindexed: left by interrupted backups, or uploaded by a live one that has not written its
    # index file yet. The latter is alive now, so arming records it and the sweep waits for it.
    for pack_id, info in stored.items():
        if pack_id not in indexed and pack_id not in deleted and not _locked(info, now):
            to_mark.append(pack_id)
    if to_repack:
        result.blobs_repacked = _repack(repo, to_repack, used)
        result.packs_repacked = len(to_repack)
        to_mark.extend(to_repack)
        _step(lock, "prune:repacked")
    if not to_mark:
        return
    key = PRUNE_PREFIX + secrets.token_hex(16)
    packs = sorted(to_mark)
    lock.check()
    repo.write_marker(key, {"time": now.isoformat(), "packs": packs})
    _step(lock, "prune:marked")
    # Listed after the mark is visible: a session missing here starts later and sees the mark.
    _arm(repo, key, now, packs, _session_keys(repo))
    _step(lock, "prune:armed")
    result.packs_marked = len(packs)


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
