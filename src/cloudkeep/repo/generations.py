"""Immutability by block generations: locks without agents (docs/format.md, "Immutability by generations").

The store locks every new object itself (S3 bucket default retention, Azure's container or
version-level default policy) for the default period ``D = retention + generation``; writers never
ask for a lock, so their credentials need no ``PutObjectRetention``. A restore point made at ``t``
with retention until ``T`` may only reference packs whose lock covers ``T``; the writer knows a
pack's lock without asking the store: its write time (index files) + ``D``, or the last bulk
extension the server recorded in ``locks/horizon``. A chunk in a pack not covered is written again.

The server (maintenance, with its own credential) extends, at most once per generation, the locks
of the packs still referenced by restore points to ``now + D`` and records that in ``locks/horizon``,
so the next generation of backups can keep deduplicating against them.

Where the store has no default rule the server can set (Azure: a container's default policy is
management-plane only), the server locks each new pack and manifest itself (``lock_new_objects``)
right after every job, and again before each bulk extension.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cloudkeep.compat import UTC
from cloudkeep.errors import ConfigurationError, IntegrityError
from cloudkeep.repo.pack import pack_key
from cloudkeep.repo.repository import Repository
from cloudkeep.storage.base import ObjectNotFoundError, ObjectStore

HORIZON_KEY = "locks/horizon"  # written only by the server: agents cannot write outside their prefix
_AAD = b"cloudkeep-lock-horizon-v1"
# A pack's write time is the writer's clock before its upload; the store starts the default lock at
# its own clock. Writers count on this much less, for clock skew and the upload's own duration.
SKEW = timedelta(hours=1)
DEFAULT_GENERATION_DAYS = 7
# What the server locks where the store does not (Azure): packs and restore-point manifests. Index
# files are left unlocked: prune replaces them (Azure cannot hide a locked blob, S3 can) and
# `rebuild-index` recovers their entries from the packs' own headers.
LOCKED_BY_SERVER = ("data/", "snapshots/")


def supports_generations(store: ObjectStore) -> bool:
    """The store locks new objects by a default rule (S3), or the server can lock them (Azure)."""
    return store.supports_default_retention or store.server_locks_new_objects


@dataclass(frozen=True)
class LockHorizon:
    """What writers need to know every pack's lock without a HEAD per pack."""

    retention_days: int  # the repository's immutability (R)
    generation_days: int  # G: how often the server extends locks in bulk
    extended_at: datetime | None = None  # the last bulk extension
    extended_until: datetime | None = None  # ... locked ``packs`` until at least this
    packs: frozenset[str] = field(default_factory=frozenset)

    @property
    def default_period(self) -> timedelta:
        """``D``: how long the store locks each new object by itself."""
        return timedelta(days=self.retention_days + self.generation_days)

    def lock_of(self, pack_id: str, written: int | None) -> datetime | None:
        """The earliest a pack's lock can end, from what the repository records; ``None``: unknown."""
        ends = []
        if written:
            ends.append(datetime.fromtimestamp(written, UTC) + self.default_period - SKEW)
        if self.extended_until is not None and pack_id in self.packs:
            ends.append(self.extended_until)
        return max(ends) if ends else None

    def covers(self, pack_id: str, written: int | None, until: datetime) -> bool:
        lock = self.lock_of(pack_id, written)
        return lock is not None and lock >= until


def read_horizon(repo: Repository) -> LockHorizon | None:
    """The repository's horizon; ``None`` where it keeps per-object locks (no generations)."""
    try:
        data = repo.store.get(HORIZON_KEY)
    except ObjectNotFoundError:
        return None
    plain = repo.keyring.open_shared(data, _AAD, HORIZON_KEY)  # or the repository key, before format 3
    try:
        doc = json.loads(plain)
        retention, generation = doc["retention_days"], doc["generation_days"]
        days = (retention, generation)
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 36500 for v in days):
            raise ValueError("retention_days and generation_days must be whole days in 1..36500")
        at, until, packs = doc.get("extended_at"), doc.get("extended_until"), doc.get("packs", [])
        if not isinstance(packs, list) or not all(isinstance(p, str) for p in packs):
            raise ValueError("packs must be a list of pack ids")
        return LockHorizon(
            retention, generation, _utc(at) if at else None, _utc(until) if until else None, frozenset(packs)
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{HORIZON_KEY}: malformed ({exc})", hint="the server rewrites it") from None


def _utc(text: Any) -> datetime:
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return when.astimezone(UTC)


def write_horizon(repo: Repository, horizon: LockHorizon) -> None:
    """Server only (its credential writes outside the writers' prefixes)."""
    doc = {
        "retention_days": horizon.retention_days,
        "generation_days": horizon.generation_days,
        "extended_at": horizon.extended_at.isoformat() if horizon.extended_at else None,
        "extended_until": horizon.extended_until.isoformat() if horizon.extended_until else None,
        "packs": sorted(horizon.packs),
    }
    repo.store.put(HORIZON_KEY, repo.crypter.encode(json.dumps(doc).encode(), _AAD))


def enable_generations(
    repo: Repository, *, retention_days: int, generation_days: int = DEFAULT_GENERATION_DAYS
) -> LockHorizon:
    """Turn immutability by generations on (the server, when it adds an immutable repository).

    Sets the store's default retention to ``D`` first, then writes the horizon that tells writers
    to rely on it; an existing horizon's extension record is kept.
    """
    if retention_days <= 0 or generation_days <= 0:
        raise ConfigurationError("immutability by generations needs a retention and a generation of 1+ days")
    if not supports_generations(repo.store):
        raise ConfigurationError(
            f"{repo.store.describe()} can neither lock new objects by default nor one by one",
            hint="immutability needs S3 Object Lock or an Azure container with version-level immutability",
        )
    old = read_horizon(repo)
    horizon = LockHorizon(
        retention_days,
        generation_days,
        old.extended_at if old else None,
        old.extended_until if old else None,
        old.packs if old else frozenset(),
    )
    if repo.store.supports_default_retention:
        repo.store.set_default_retention(retention_days + generation_days)
    write_horizon(repo, horizon)
    return horizon


@dataclass
class ExtendResult:
    extended: int = 0  # packs whose lock was lengthened (one PutObjectRetention each)
    read_once: int = 0  # packs of unknown lock (per-object locks from before generations): one HEAD each
    skipped: str = ""  # why nothing was done
    until: datetime | None = None
    locked_new: int = 0  # objects written without a lock that the server locked (Azure), one request each
    next_due: datetime | None = None  # when the next extension is due: the last one + G


def lock_new_objects(
    repo: Repository,
    *,
    now: datetime,
    writer_prefixes: Iterable[str] | None = None,
    horizon: LockHorizon | None = None,
) -> set[str]:
    """Where the store locks nothing by itself (Azure), lock every pack and manifest still without
    a lock until ``now + D``; returns their keys. A no-op where the store's default rule does it.

    The server calls it after each job for that job's machines (``writer_prefixes``), which closes
    the window between a backup writing a pack and the pack being locked, and for the whole
    repository before each bulk extension (a job whose step failed is caught up there). The
    listing carries each blob's policy, so finding them costs a list request per 5,000 objects
    and no HEAD; locking costs one request per new object.
    """
    if not repo.store.server_locks_new_objects:
        return set()
    horizon = horizon or read_horizon(repo)
    if horizon is None:
        return set()
    roots = ["", *repo.writer_prefixes()] if writer_prefixes is None else list(writer_prefixes)
    until = now + horizon.default_period
    locked: set[str] = set()
    for root in roots:
        for kind in LOCKED_BY_SERVER:
            for info in repo.store.list(root + kind):
                if info.retain_until is None:
                    repo.store.extend_retention(info.key, until, known_shorter=True)
                    locked.add(info.key)
    return locked


def extend_locks(
    repo: Repository,
    *,
    now: datetime,
    force: bool = False,
    used: Callable[[Repository], set[bytes]] | None = None,
) -> ExtendResult:
    """The server's bulk step: at most once per generation, lock every pack that restore points
    still reference until ``now + D``, then record it in the horizon (with the server's credential).

    Packs of known lock get a PutObjectRetention without a HEAD (the new date is later than any
    lock they can have); packs of unknown lock (written with per-object locks before generations)
    are read once, then recorded like the others.
    """
    from cloudkeep.repo.prune import used_blobs  # prune imports the writer side; keep this lazy

    horizon = read_horizon(repo)
    if horizon is None:
        raise ConfigurationError(
            "this repository does not use immutability by generations",
            hint="the server enables it when the repository has immutability",
        )
    fresh = lock_new_objects(repo, now=now, horizon=horizon)
    generation = timedelta(days=horizon.generation_days)
    if not force and horizon.extended_at is not None and now - horizon.extended_at < generation:
        skipped = f"extended {horizon.extended_at.isoformat()}, less than a generation ago"
        return ExtendResult(skipped=skipped, locked_new=len(fresh), next_due=horizon.extended_at + generation)
    repo.load_index()
    until = now + horizon.default_period
    blobs = (used or used_blobs)(repo)
    with repo.lock:
        locations = (repo.index.get(b) for b in blobs)
        packs = {loc.pack_id for loc in locations if loc is not None}
        written = {p: repo.index.written.get(p) for p in packs}
    result = ExtendResult(until=until, locked_new=len(fresh), next_due=now + generation)
    for pack_id in sorted(packs):
        known = horizon.lock_of(pack_id, written[pack_id])
        if (known is not None and known >= until) or pack_key(pack_id) in fresh:
            continue
        if known is None:
            result.read_once += 1
        if repo.store.extend_retention(pack_key(pack_id), until, known_shorter=known is not None):
            result.extended += 1
    done = LockHorizon(horizon.retention_days, horizon.generation_days, now, until, frozenset(packs))
    write_horizon(repo, done)
    return result
