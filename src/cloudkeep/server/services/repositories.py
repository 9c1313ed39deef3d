"""Object storage repositories (backups) and distribution repositories (installers only)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select

from cloudkeep.errors import CloudkeepError, ConfigurationError, ConflictError
from cloudkeep.repo import Repository as FormatRepository
from cloudkeep.repo import check
from cloudkeep.repo.confidential import CONFIDENTIAL_FORMAT
from cloudkeep.repo.generations import DEFAULT_GENERATION_DAYS, enable_generations, supports_generations
from cloudkeep.server import audit, manifest_pins
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import BackupJob, Credential, ProtectionGroup, Repository, RestorePoint
from cloudkeep.server.services.common import ensure_unique_name, paginate, resolve
from cloudkeep.server.services.maintenance_schemas import (
    RepositoryCheck,
    RepositoryRepair,
    RepositoryRepairRequest,
    StoreCheckView,
    StoreVerification,
)
from cloudkeep.server.services.schemas import (
    Page,
    Purpose,
    RepositoryCreate,
    RepositoryUpdate,
    RepositoryView,
)
from cloudkeep.server.sessions.access import opened_repository
from cloudkeep.storage.base import store_writes
from cloudkeep.storage.conformance import StoreCheck, require_create_only, run_checks


def view(row: Repository) -> RepositoryView:
    return RepositoryView(
        id=row.id,
        name=row.name,
        purpose=row.purpose,
        credential_id=row.credential_id,
        location=row.location,
        immutability_days=row.immutability_days,
        options=row.options,
        has_password=row.password is not None,
        created_at=row.created_at,
    )


def _initialize(ctx: ServerContext, credential_id: str, data: RepositoryCreate) -> None:
    """Create the bucket/container and, for a backup repository, the repository format in it.

    First the store is held to what backups rely on: create-only writes must be enforced, and
    agents must be able to get credentials (STS, or the credential's agent key without it).
    """
    provider = ctx.provider_for(credential_id)
    try:
        backup = data.purpose == "backup"
        if backup:  # before anything is created: STS or the agent key must answer
            provider.storage.scoped_credentials(data.location, "ck-verify/", expires_seconds=900)
        provider.storage.ensure_container(data.location, object_lock=data.immutability_days > 0)
        if not backup:
            return
        store = provider.storage.open_store(data.location)
        try:
            with store_writes(store):  # a store refusing the server's writes: 503 repository_write
                require_create_only(store)
            assert data.password is not None
            tuning = {k: data.options[k] for k in ("pack_size", "compression_level") if k in data.options}
            generations = data.immutability_days > 0 and supports_generations(store)
            if store.supports_default_retention and generations:  # the store locks what agents write
                store.set_default_retention(data.immutability_days + DEFAULT_GENERATION_DAYS)
            # Format 3: machines get writer bundles, never the password (docs/format.md)
            created = FormatRepository.create(
                store, data.password.get_secret_value(), version=CONFIDENTIAL_FORMAT, **tuning
            )
            try:
                if generations:
                    enable_generations(created, retention_days=data.immutability_days)
            finally:
                created.close()
        except ConflictError as exc:
            raise ConflictError(
                f"{data.location} already holds a cloudkeep repository",
                hint="attach it without initialising (--no-init), giving its password",
            ) from exc
        finally:
            store.close()
    finally:
        provider.close()


def create_repository(ctx: ServerContext, data: RepositoryCreate, *, actor: str = "local") -> RepositoryView:
    if data.purpose == "backup" and (data.password is None or len(data.password.get_secret_value()) < 8):
        raise ConfigurationError(
            "a backup repository needs a password of at least 8 characters",
            hint="give --password-env/--password-stdin, or answer the prompt",
        )
    if data.purpose == "distribution" and data.immutability_days:
        raise ConfigurationError("immutability applies to backup repositories only")
    with ctx.db() as session:
        ensure_unique_name(session, Repository, data.name, "repository")
        credential_id = resolve(session, Credential, data.credential, "credential").id
    if data.initialize:
        _initialize(ctx, credential_id, data)
    with ctx.db() as session:
        ensure_unique_name(session, Repository, data.name, "repository")  # again: init took time
        row = Repository(
            name=data.name,
            purpose=data.purpose,
            credential_id=credential_id,
            location=data.location,
            password=ctx.secrets.seal(data.password.get_secret_value()) if data.password else None,
            immutability_days=data.immutability_days,
            options=data.options,
        )
        session.add(row)
        session.flush()
        detail = {"name": row.name, "purpose": row.purpose, "location": row.location}
        audit.record(session, actor, "repository.create", row.id, detail)
        return view(row)


def list_repositories(
    ctx: ServerContext, *, purpose: Purpose | None = None, limit: int = 100, offset: int = 0
) -> Page[RepositoryView]:
    stmt = select(Repository).order_by(Repository.name)
    if purpose:
        stmt = stmt.where(Repository.purpose == purpose)
    with ctx.db() as session:
        return paginate(session, stmt, view, limit, offset)


def get_repository(ctx: ServerContext, ref: str) -> RepositoryView:
    with ctx.db() as session:
        return view(resolve(session, Repository, ref, "repository"))


FORMAT_OPTIONS = ("pack_size", "compression_level")  # written into the repository at creation


def update_repository(
    ctx: ServerContext, ref: str, data: RepositoryUpdate, *, actor: str = "local"
) -> RepositoryView:
    """Rename, switch the credential or change options; what the data depends on stays."""
    with ctx.db() as session:
        row = resolve(session, Repository, ref, "repository")
        fixed = sorted(k for k in (data.options or {}) if k in FORMAT_OPTIONS)
        if fixed:
            raise ConfigurationError(
                f"{', '.join(fixed)} of repository {row.name!r} cannot change: the repository was created "
                "with them",
                hint="create a new repository with the new settings and point the jobs at it",
            )
        if data.name is not None and data.name != row.name:
            ensure_unique_name(session, Repository, data.name, "repository")
            row.name = data.name
        if data.credential is not None:
            credential = resolve(session, Credential, data.credential, "credential")
            if credential.provider != row.credential.provider:
                raise ConfigurationError(
                    f"credential {credential.name!r} is for {credential.provider}, the repository is in "
                    f"{row.credential.provider}",
                    hint="the data stays where it is: give a credential of the same cloud",
                )
            row.credential_id = credential.id
        if data.options is not None:
            merged = {**row.options, **data.options}
            row.options = {k: v for k, v in merged.items() if v is not None}
        session.flush()
        detail = {"name": row.name, "changed": sorted(data.model_fields_set)}
        audit.record(session, actor, "repository.update", row.id, detail)
        return view(row)


def delete_repository(ctx: ServerContext, ref: str, *, actor: str = "local") -> None:
    """Forget a repository (its data stays in storage); refused while anything refers to it."""
    with ctx.db() as session:
        row = resolve(session, Repository, ref, "repository")
        users = [j.name for j in session.scalars(select(BackupJob).where(BackupJob.repository_id == row.id))]
        groups = select(ProtectionGroup).where(ProtectionGroup.distribution_repository_id == row.id)
        users += [g.name for g in session.scalars(groups)]
        points = session.scalar(select(RestorePoint.id).where(RestorePoint.repository_id == row.id).limit(1))
        if users or points:
            what = ", ".join(sorted(users)) or "restore points in the catalog"
            raise ConflictError(
                f"repository {row.name!r} is still used by {what}",
                hint="delete those jobs/groups first; restore points keep a repository in the catalog",
            )
        session.delete(row)
        audit.record(session, actor, "repository.delete", row.id, {"name": row.name})


def check_repository(
    ctx: ServerContext, ref: str, *, read_data_subset: float | None = None
) -> RepositoryCheck:
    """Verify the repository's structure (and optionally a share of its data) from the server."""
    row = _backup_row(ctx, ref, "checked")
    try:
        with opened_repository(ctx, row) as repo:
            report = check(repo, read_data_subset=read_data_subset) if read_data_subset else check(repo)
            # and what the catalog accepted at backup time is still what the repository holds
            altered = manifest_pins.catalog_problems(ctx, row.id, repo)
    except CloudkeepError as exc:
        return RepositoryCheck(repository_id=row.id, ok=False, problems=[str(exc)])
    problems = [str(p) for p in report.problems]
    ok = report.ok and not altered
    return RepositoryCheck(repository_id=row.id, ok=ok, problems=problems + altered)


def repair_repository(
    ctx: ServerContext, ref: str, request: RepositoryRepairRequest, *, actor: str = "local"
) -> RepositoryRepair:
    """Rebuild what damage left rebuildable (`repair index`, then `repair snapshots`) from the server,
    with the repository's full credential; what cannot be rebuilt is moved aside, never deleted."""
    from cloudkeep.repo.repair import RepairReport, repair_index, repair_snapshots

    reports: list[RepairReport] = []
    with _opened_backup_repository(ctx, ref, "repaired") as (repository_id, repo):
        if request.index:
            reports.append(repair_index(repo))
        if request.snapshots:
            reports.append(repair_snapshots(repo, rewrite=request.rewrite))
    total = RepairReport()
    for report in reports:
        total.packs_recovered += report.packs_recovered
        total.packs_dropped += report.packs_dropped
        total.moved_aside += report.moved_aside
        total.rewritten.update(report.rewritten)
        total.dropped_paths.update(report.dropped_paths)
        total.problems += report.problems
    with ctx.db() as session:
        audit.record(session, actor, "repository.repair", repository_id, {"moved_aside": total.moved_aside,
                     "rewritten": total.rewritten, "packs_recovered": total.packs_recovered})  # fmt: skip
    return RepositoryRepair(
        repository_id=repository_id,
        changed=total.changed,
        packs_recovered=total.packs_recovered,
        packs_dropped=total.packs_dropped,
        moved_aside=total.moved_aside,
        rewritten=total.rewritten,
        dropped_paths=total.dropped_paths,
        problems=total.problems,
    )


def _backup_row(ctx: ServerContext, ref: str, what: str) -> Repository:
    with ctx.db() as session:
        row = resolve(session, Repository, ref, "repository")
        if row.purpose != "backup" or row.password is None:
            raise ConfigurationError(
                f"repository {row.name!r} is a {row.purpose} repository; only backups are {what}"
            )
        return row


@contextmanager
def _opened_backup_repository(
    ctx: ServerContext, ref: str, what: str
) -> Iterator[tuple[str, FormatRepository]]:
    """The repository format opened from the server with the repository's full credential."""
    row = _backup_row(ctx, ref, what)
    with opened_repository(ctx, row) as repo:
        yield row.id, repo


def verify_store(ctx: ServerContext, ref: str) -> StoreVerification:
    """Run the storage conformance checks against the repository's store and endpoint.

    Each check writes only under a fresh ``ck-verify/`` prefix and removes what it wrote.
    """
    with ctx.db() as session:
        row = resolve(session, Repository, ref, "repository")
        repository_id, credential_id, location = row.id, row.credential_id, row.location
    provider = ctx.provider_for(credential_id)
    try:
        store = provider.storage.open_store(location)
        try:
            results = run_checks(store)
        finally:
            store.close()
        results += provider.storage.compatibility_checks(location)
    except CloudkeepError as exc:
        results = [StoreCheck("store", False, str(exc), "fix the location or credential first")]
    finally:
        provider.close()
    checks = [StoreCheckView(name=r.name, ok=r.ok, detail=r.detail, action=r.action) for r in results]
    return StoreVerification(
        repository_id=repository_id, location=location, ok=all(c.ok for c in checks), checks=checks
    )
