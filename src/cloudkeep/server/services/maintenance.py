"""Repository maintenance from the server: stats, forget, prune, password change, and deleting one
restore point. Each step that writes runs as a ``maintenance`` session, so it is in session history."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from cloudkeep.errors import ConfigurationError, ConflictError, NotFoundError
from cloudkeep.repo import generations, retention
from cloudkeep.repo.migrate import migrate_to_confidential
from cloudkeep.repo.prune import prune
from cloudkeep.repo.vouch import vouch_new_packs
from cloudkeep.server import audit
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import JobSession, Repository, RestorePoint, utcnow
from cloudkeep.server.services.common import resolve
from cloudkeep.server.services.maintenance_schemas import (
    ForgetReport,
    ForgetRequest,
    MaintenanceDone,
    PasswordChange,
    PruneReport,
    RepositoryStats,
)
from cloudkeep.server.services.repositories import _opened_backup_repository
from cloudkeep.server.services.restore_points import get_restore_point
from cloudkeep.storage import ObjectLockedError

clock: Callable[[], datetime] = utcnow  # tests replace it: immutability is judged against it


@contextmanager
def _session(ctx: ServerContext, operation: str, target: str, actor: str) -> Iterator[str]:
    """A ``maintenance`` session around one step: success when it returns, failed with the reason."""
    with ctx.db() as db:
        row = JobSession(
            kind="maintenance",
            state="running",
            started_at=clock(),
            stats={"operation": operation, "target": target, "actor": actor},
        )
        db.add(row)
        db.flush()
        session_id = row.id
    state, reason = "failed", ""
    try:
        yield session_id
        state = "success"
    except BaseException as exc:
        reason = str(exc) or type(exc).__name__
        raise
    finally:
        with ctx.db() as db:
            done = db.get(JobSession, session_id)
            if done is not None:
                done.state, done.reason, done.ended_at = state, reason, clock()


def repository_stats(ctx: ServerContext, ref: str) -> RepositoryStats:
    """Count what the repository holds (read only)."""
    with _opened_backup_repository(ctx, ref, "counted") as (repository_id, repo):
        packs = list(repo.list_everywhere("data/"))
        snapshots = len(repo.snapshot_ids())
        index_files = sum(1 for _ in repo.list_everywhere("index/"))
        keys = len(repo.key_names())
    with ctx.db() as db:
        listed = select(func.count()).where(
            RestorePoint.repository_id == repository_id, RestorePoint.removed_at.is_(None)
        )
        in_catalog = db.scalar(listed) or 0
    return RepositoryStats(
        repository_id=repository_id,
        snapshots=snapshots,
        catalog_restore_points=in_catalog,
        packs=len(packs),
        stored_bytes=sum(p.size for p in packs),
        index_files=index_files,
        keys=keys,
    )


def _mark_removed(ctx: ServerContext, repository_id: str, snapshot_ids: list[str]) -> None:
    if not snapshot_ids:
        return
    with ctx.db() as db:
        rows = db.scalars(
            select(RestorePoint).where(
                RestorePoint.repository_id == repository_id, RestorePoint.snapshot_id.in_(snapshot_ids)
            )
        )
        for row in rows:
            row.removed_at = row.removed_at or clock()


def forget_restore_points(
    ctx: ServerContext, ref: str, data: ForgetRequest, *, actor: str = "local"
) -> ForgetReport:
    """Forget the restore points the policy does not keep (their data goes with the next prune)."""
    rules = data.model_dump(include=set(retention.POLICY_KEYS))
    if not rules.get("keep_last"):
        rules.pop("keep_last", None)  # the request's 0 means "no such rule"; the policy's None does
    policy = retention.RetentionPolicy.from_mapping(rules)
    if policy.keeps_everything:
        raise ConfigurationError("the retention policy keeps nothing", hint="give at least one --keep-* rule")
    if data.dry_run:
        with _opened_backup_repository(ctx, ref, "forgotten") as (repository_id, repo):
            result = retention.forget(repo, policy, now=clock(), dry_run=True)
        return ForgetReport(
            repository_id=repository_id,
            session_id=None,
            dry_run=True,
            kept=result.kept,
            removed=result.removed,
        )
    repository_id = _repository_id(ctx, ref)
    with _session(ctx, "forget", repository_id, actor) as session_id:
        with _opened_backup_repository(ctx, ref, "forgotten") as (_, repo):
            result = retention.forget(repo, policy, now=clock())
        _mark_removed(ctx, repository_id, result.removed)
        _audit(ctx, actor, "repository.forget", repository_id, {"removed": result.removed})
    return ForgetReport(
        repository_id=repository_id,
        session_id=session_id,
        dry_run=False,
        kept=result.kept,
        removed=result.removed,
    )


def prune_repository(ctx: ServerContext, ref: str, *, actor: str = "local") -> PruneReport:
    """Delete data no restore point uses any more (after the grace period the engine keeps)."""
    repository_id = _repository_id(ctx, ref)
    with _session(ctx, "prune", repository_id, actor) as session_id:
        with _opened_backup_repository(ctx, ref, "pruned") as (_, repo):
            result = prune(repo, now=clock())
        _audit(ctx, actor, "repository.prune", repository_id, {"bytes_freed": result.bytes_freed})
    return PruneReport(
        repository_id=repository_id,
        session_id=session_id,
        packs_deleted=result.packs_deleted,
        packs_repacked=result.packs_repacked,
        packs_marked=result.packs_marked,
        bytes_freed=result.bytes_freed,
        warnings=result.warnings,
    )


def extend_locks(ctx: ServerContext, ref: str, *, actor: str = "local") -> MaintenanceDone:
    """The ``extend-locks`` step (see ``run_extend_locks``), as the API and the CLI report it."""
    return run_extend_locks(ctx, ref, actor=actor)[0]


def run_extend_locks(
    ctx: ServerContext, ref: str, *, actor: str = "local"
) -> tuple[MaintenanceDone, generations.ExtendResult]:
    """Immutability by generations: lock the packs restore points reference for one more
    generation, with the server's credential (agents hold no lock permission). Runs at most once
    per generation; an earlier call records that it had nothing to do.

    An immutable repository made before generations (per-object locks) moves to them here: the
    bucket gets its default retention and the horizon, then its packs' locks are read once.
    """
    repository_id = _repository_id(ctx, ref)
    with ctx.db() as db:
        days = resolve(db, Repository, repository_id, "repository").immutability_days
    with _session(ctx, "extend-locks", repository_id, actor) as session_id:
        with _opened_backup_repository(ctx, ref, "locked") as (_, repo):
            if (
                days
                and generations.supports_generations(repo.store)
                and generations.read_horizon(repo) is None
            ):
                generations.enable_generations(repo, retention_days=days)
            result = generations.extend_locks(repo, now=clock())
        detail = {"extended": result.extended, "read_once": result.read_once, "skipped": result.skipped,
                  "locked_new": result.locked_new}  # fmt: skip
        _audit(ctx, actor, "repository.extend_locks", repository_id, detail)
    done = f"skipped: {result.skipped}"
    if not result.skipped and result.until is not None:
        done = f"{result.extended} packs locked until {result.until:%Y-%m-%d}, {result.read_once} read once"
    if result.locked_new:
        done += f"; {result.locked_new} new objects locked"
    return MaintenanceDone(target_id=repository_id, session_id=session_id, detail=done), result


def change_password(
    ctx: ServerContext, ref: str, data: PasswordChange, *, actor: str = "local"
) -> MaintenanceDone:
    """Give the repository a new password: the new key first, then the catalog, then the old key
    goes, so a failure at any step leaves a password that opens it stored in the catalog."""
    new = data.new_password.get_secret_value()
    if len(new) < 8:
        raise ConfigurationError("a repository password needs at least 8 characters")
    repository_id = _repository_id(ctx, ref)
    with _session(ctx, "change-password", repository_id, actor) as session_id:
        with _opened_backup_repository(ctx, ref, "re-keyed") as (_, repo):
            old_key = repo.key_name
            repo.add_password(new)
            with ctx.db() as db:
                row = resolve(db, Repository, repository_id, "repository")
                row.password = ctx.secrets.seal(new)
            repo.store.delete_or_hide(old_key)  # locked by a default retention: hidden (docs/format.md)
        _audit(ctx, actor, "repository.change_password", repository_id, {})
    return MaintenanceDone(
        target_id=repository_id, session_id=session_id, detail="the repository has a new password"
    )


def migrate_repository(ctx: ServerContext, ref: str, *, actor: str = "local") -> MaintenanceDone:
    """Move a format 1-2 repository to format 3 (under its maintenance lock): machines then get
    writer bundles instead of its password, and cannot decrypt each other's new backups. Older
    restore points stay readable with the repository key (the server's; docs/format.md)."""
    repository_id = _repository_id(ctx, ref)
    with _session(ctx, "migrate", repository_id, actor) as session_id:
        with _opened_backup_repository(ctx, ref, "migrated") as (_, repo):
            before = repo.config.version
            changed = migrate_to_confidential(repo, now=clock())
            # Machines deduplicate only against vouched packs (repo/vouch.py): read the old ones once
            # now rather than have the next backups store everything again.
            vouched = vouch_new_packs(repo)
        _audit(ctx, actor, "repository.migrate", repository_id, {"from": before, "changed": changed})
    done = "already format 3: nothing to do"
    if changed:
        done = f"format {before} → 3: machines now get writer bundles, never the repository password"
    if vouched.vouched or vouched.refused:
        done += f"; {len(vouched.vouched)} pack(s) vouched for ({vouched.bytes_read} bytes read)"
    if vouched.refused:
        done += f", {len(vouched.refused)} refused (of {', '.join(vouched.refused_writers) or 'the root'})"
    return MaintenanceDone(target_id=repository_id, session_id=session_id, detail=done)


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def delete_restore_point(ctx: ServerContext, ref: str, *, actor: str = "local") -> MaintenanceDone:
    """Forget one restore point in its repository and mark it removed in the catalog; an immutable
    one (its retention has not ended, or the store's lock refuses) is refused and kept."""
    point = get_restore_point(ctx, ref)
    if point.removed_at is not None:
        raise ConflictError(f"restore point {point.id} was already removed")
    locked_until = point.retain_until
    if locked_until is not None and _as_utc(locked_until) > clock():
        raise ConflictError(
            f"restore point {point.id} is immutable until {_as_utc(locked_until).isoformat()}",
            hint="it can be deleted once its retention ends",
        )
    with _session(ctx, "delete-restore-point", point.id, actor) as session_id:
        with _opened_backup_repository(ctx, point.repository_id, "changed") as (_, repo):
            try:
                key: str | None = repo.snapshot_key(point.snapshot_id)
            except NotFoundError:
                key = None  # already gone from the repository: the catalog catches up
            try:
                if key is not None:
                    repo.store.delete(key)
            except ObjectLockedError as exc:
                raise ConflictError(
                    f"restore point {point.id} is locked by the storage's retention: {exc}",
                    hint="it can be deleted once its retention ends",
                ) from exc
        _mark_removed(ctx, point.repository_id, [point.snapshot_id])
        _audit(ctx, actor, "restore_point.delete", point.id, {"snapshot_id": point.snapshot_id})
    return MaintenanceDone(
        target_id=point.id, session_id=session_id, detail="forgotten; its data goes with the next prune"
    )


def _repository_id(ctx: ServerContext, ref: str) -> str:
    with ctx.db() as db:
        return resolve(db, Repository, ref, "repository").id


def _audit(ctx: ServerContext, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
    with ctx.db() as db:
        audit.record(db, actor, action, target, detail)
