"""The catalog's hold on restore-point manifests: pinned when a backup is accepted, checked before use.

A machine holds the repository key and may write whatever it likes in its own namespace, at any
time, so the catalog does not take the repository's later word for a restore point. When a
machine reports a backup, the server reads that manifest itself (full credential, from the
machine's namespace), proves it belongs under its id, compares it with what the machine reported,
and records its digest (keyed hash of the manifest's plaintext; the id itself for
content-addressed manifests) and root tree on the ``RestorePoint``. Browse, search, download,
export and restores through a machine read it again first and refuse a point whose manifest is
no longer that one, before anything is restored. Points recorded before pins existed are pinned
the first time the server reads them (see docs/format.md for what that leaves open).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import select, update

from cloudkeep.errors import CloudkeepError, IntegrityError, NotFoundError
from cloudkeep.repo.snapshot import SNAPSHOT_PREFIX, Snapshot, is_snapshot_id
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import RestorePoint
from cloudkeep.server.sessions.access import agent_write_prefix, load_repository, opened_repository
from cloudkeep.storage.base import ObjectNotFoundError

if TYPE_CHECKING:
    from cloudkeep.repo.repository import Repository

_HEX_ID = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ManifestPin:
    """What the catalog holds of a manifest: its digest and its root tree id (both 64 hex)."""

    digest: str
    tree: str

    @classmethod
    def of(cls, snapshot: Snapshot) -> ManifestPin:
        return cls(snapshot.digest, snapshot.tree)

    @classmethod
    def reported(cls, payload: dict[str, Any]) -> ManifestPin | None:
        """The pin a machine reported with its backup result, if it reported a well-formed one."""
        digest, tree = payload.get("manifest_digest"), payload.get("root_tree")
        if (
            isinstance(digest, str)
            and isinstance(tree, str)
            and _HEX_ID.fullmatch(digest)
            and _HEX_ID.fullmatch(tree)
        ):
            return cls(digest, tree)
        return None

    def matches(self, snapshot: Snapshot) -> bool:
        return hmac.compare_digest(self.digest, snapshot.digest) and self.tree == snapshot.tree


class ManifestReader:
    """Reads one restore point's manifest where its machine wrote it, proven to belong under its id."""

    def __init__(self, read: Callable[[str], Snapshot]) -> None:
        self._read = read

    @classmethod
    def of_repository(cls, repo: Repository) -> ManifestReader:
        """Through an opened repository, which then restores from the very object that was checked."""
        return cls(repo.read_snapshot)

    @classmethod
    def over_repository(cls, repo: Repository) -> ManifestReader:
        """One GET per manifest, from a repository opened without its index (backup results).

        Version 1 manifests are read whatever the repository's format: the pin decides what is
        accepted, and a point recorded with a content id can only be read as version 2.
        """
        return cls(lambda key: repo.keyring.open_manifest(key, repo.store.get(key), allow_legacy=True))

    def read(self, machine_id: str, snapshot_id: str) -> Snapshot:
        """The manifest in the machine's namespace (or the root layout of older repositories)."""
        if not is_snapshot_id(snapshot_id):
            raise IntegrityError(f"{snapshot_id[:80]!r} is not a restore point id")
        keys = (agent_write_prefix(machine_id) + SNAPSHOT_PREFIX + snapshot_id, SNAPSHOT_PREFIX + snapshot_id)
        for key in keys:
            try:
                return self._read(key)
            except ObjectNotFoundError:
                continue
        raise NotFoundError(
            f"manifest {snapshot_id} is not in the repository (looked at {', '.join(keys)})",
            hint="it was removed from storage; pick another restore point and check the repository",
        )


@contextmanager
def manifest_reader(
    ctx: ServerContext, repository_id: str, password: str | None = None
) -> Iterator[ManifestReader]:
    """A reader over a catalogued repository, opened here with the repository credential."""
    repository = load_repository(ctx, repository_id)
    with opened_repository(ctx, repository, password=password, load_index=False) as repo:
        yield ManifestReader.over_repository(repo)


def accept(
    reader: ManifestReader, machine_id: str, snapshot_id: str, reported: ManifestPin | None
) -> ManifestPin:
    """The pin for a newly reported backup, read from the repository; ``IntegrityError`` if they disagree."""
    snapshot = reader.read(machine_id, snapshot_id)
    if reported is not None and not reported.matches(snapshot):
        raise IntegrityError(
            f"restore point {snapshot_id}: the manifest in the repository is not the one the machine "
            "reported (digest or root tree differ)",
            hint="the backup was not recorded; check the machine and run `cloudkeep repository check`",
        )
    return ManifestPin.of(snapshot)


def pin_backup(
    open_reader: Callable[[], ManifestReader],
    machine_id: str,
    snapshot_id: str,
    payload: dict[str, Any],
    note: Callable[[str], None],
) -> ManifestPin | None:
    """The pin of a reported backup. ``IntegrityError``/``NotFoundError``: the repository disagrees.

    If the server cannot read the repository right now, the machine's report (made at backup
    time) is pinned instead, or nothing, and the point is then pinned on its first use; ``note``
    says so in the task's log.
    """
    reported = ManifestPin.reported(payload)

    def unchecked(exc: CloudkeepError) -> ManifestPin | None:
        what = "the machine's report" if reported else "nothing yet (pinned on first use)"
        note(f"restore point {snapshot_id} not checked in the repository ({exc.message}); pinned {what}")
        return reported

    try:
        reader = open_reader()
    except CloudkeepError as exc:  # no repository to read here (not initialised, unreachable, password)
        return unchecked(exc)
    try:
        return accept(reader, machine_id, snapshot_id, reported)
    except (IntegrityError, NotFoundError):
        raise
    except CloudkeepError as exc:  # unreachable right now: the machine's word from backup time stands
        return unchecked(exc)


class PinnedPoint(Protocol):
    """The catalog fields a check needs (a ``RestorePoint`` row, or a detached view of one)."""

    @property
    def id(self) -> str: ...
    @property
    def machine_id(self) -> str: ...
    @property
    def snapshot_id(self) -> str: ...
    @property
    def manifest_digest(self) -> str | None: ...
    @property
    def root_tree(self) -> str | None: ...


def verify(ctx: ServerContext, reader: ManifestReader, point: PinnedPoint) -> Snapshot:
    """The point's manifest, if it still is the one the catalog accepted; pins an unpinned point.

    Raises ``IntegrityError`` ("restore point X was altered in the repository after backup") on a
    mismatch or an unreadable manifest, ``NotFoundError`` if it is gone.
    """
    try:
        snapshot = reader.read(point.machine_id, point.snapshot_id)
    except NotFoundError as exc:
        raise NotFoundError(
            f"restore point {point.id} was removed from storage: {exc.message}", hint=exc.hint
        ) from None
    except IntegrityError as exc:
        raise IntegrityError(
            f"restore point {point.id} was altered in the repository after backup: {exc.message}",
            hint="nothing was restored; use another restore point and check how the machine's "
            "namespace was written (`cloudkeep repository check` names the object)",
        ) from None
    if point.manifest_digest is None or point.root_tree is None:
        _pin_first_use(ctx, point.id, ManifestPin.of(snapshot))
        return snapshot
    if not ManifestPin(point.manifest_digest, point.root_tree).matches(snapshot):
        raise IntegrityError(
            f"restore point {point.id} was altered in the repository after backup: its manifest "
            f"(restore point {point.snapshot_id}) is no longer the one accepted when it was recorded",
            hint="nothing was restored; use another restore point and check how the machine's "
            "namespace was written",
        )
    return snapshot


def _pin_first_use(ctx: ServerContext, point_id: str, pin: ManifestPin) -> None:
    """Points recorded before pins existed: what is read now becomes what later reads must match."""
    with ctx.db() as db:
        db.execute(
            update(RestorePoint)
            .where(RestorePoint.id == point_id, RestorePoint.manifest_digest.is_(None))
            .values(manifest_digest=pin.digest, root_tree=pin.tree)
        )


def catalog_problems(ctx: ServerContext, repository_id: str, repo: Repository) -> list[str]:
    """Every live catalogued point of the repository checked against its pin (``repository check``)."""
    with ctx.db() as db:
        points = list(
            db.scalars(
                select(RestorePoint).where(
                    RestorePoint.repository_id == repository_id, RestorePoint.removed_at.is_(None)
                )
            )
        )
    reader = ManifestReader.of_repository(repo)
    problems: list[str] = []
    for point in points:
        try:
            verify(ctx, reader, point)
        except (IntegrityError, NotFoundError) as exc:
            problems.append(exc.message)
    return problems
