"""The service layer on SQLite and PostgreSQL: validation, conflicts, audit, secrets at rest."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import func, select
from tests.server.fixtures import Seeded, add_machine

from cloudkeep.errors import ConfigurationError, ConflictError, NotFoundError
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import AuditEvent, BackupJob, Credential, Repository
from cloudkeep.server.services import (
    admin,
    credentials,
    jobs,
    machines,
    protection_groups,
    repositories,
    restore_points,
    sessions,
)
from cloudkeep.server.services.schemas import (
    CredentialCreate,
    JobCreate,
    JobUpdate,
    ProtectionGroupUpdate,
    RepositoryCreate,
    Retention,
)

SECRET = "s3cr3t-credential-value"


def audit_count(ctx: ServerContext) -> int:
    with ctx.db() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent)) or 0


def test_crud_and_audit(ctx: ServerContext, seeded: Seeded) -> None:
    assert [c.name for c in credentials.list_credentials(ctx).items] == [seeded.credential]
    assert {r.name for r in repositories.list_repositories(ctx).items} == {seeded.backup, seeded.distribution}
    assert repositories.list_repositories(ctx, purpose="distribution").total == 1
    machine_id = add_machine(ctx, seeded.group, "web-1")
    job = jobs.create_job(
        ctx,
        JobCreate(
            name="nightly",
            repository=seeded.backup,
            protection_groups=[seeded.group],
            schedule={"kind": "daily", "time": "02:00"},
            retention=Retention(keep_last=7, keep_monthly=12),
        ),
    )
    assert job.next_run_at is not None and job.next_run_at.tzinfo is not None
    assert job.retention == {"keep_last": 7, "keep_monthly": 12}
    disabled = jobs.set_job_enabled(ctx, "nightly", False)
    assert disabled.enabled is False and disabled.next_run_at is None
    updated = jobs.update_job(ctx, job.id, JobUpdate(machines=[machine_id], clear_schedule=True))
    assert updated.machine_ids == [machine_id] and updated.schedule is None
    group = protection_groups.update_group(ctx, seeded.group, ProtectionGroupUpdate(regions=["eu-west-1"]))
    assert group.regions == ["eu-west-1"] and group.machine_count == 1
    assert machines.get_machine(ctx, "web-1").id == machine_id
    assert machines.list_machines(ctx, group=seeded.group, status="deployed").total == 1
    actions = [e.action for e in reversed(admin.list_audit(ctx).items)]
    assert actions == [
        "credential.create",
        "repository.create",
        "repository.create",
        "protection_group.create",
        "job.create",
        "job.update",
        "job.update",
        "protection_group.update",
    ]
    jobs.delete_job(ctx, "nightly")
    with pytest.raises(NotFoundError):
        jobs.get_job(ctx, "nightly")


@pytest.mark.parametrize(
    "schedule",
    [{"kind": "daily", "time": "25:00"}, {"kind": "hourly"}, {"kind": "periodic"}, {}],
)
def test_invalid_schedule_changes_nothing(
    ctx: ServerContext, seeded: Seeded, schedule: dict[str, str]
) -> None:
    before = audit_count(ctx)
    with pytest.raises(ConfigurationError):
        jobs.create_job(
            ctx,
            JobCreate(
                name="bad", repository=seeded.backup, protection_groups=[seeded.group], schedule=schedule
            ),
        )
    with ctx.db() as session:
        assert session.scalar(select(func.count()).select_from(BackupJob)) == 0
    assert audit_count(ctx) == before


def test_bad_references_and_duplicates(ctx: ServerContext, seeded: Seeded) -> None:
    before = audit_count(ctx)
    with pytest.raises(ConflictError, match="already exists"):
        credentials.create_credential(ctx, CredentialCreate(name=seeded.credential, provider="local"))
    with pytest.raises(NotFoundError, match="credential 'nope'"):
        repositories.create_repository(
            ctx, RepositoryCreate(name="r2", purpose="distribution", credential="nope", location="x")
        )
    with pytest.raises(ConfigurationError, match="password"):
        repositories.create_repository(
            ctx, RepositoryCreate(name="r3", credential=seeded.credential, location="y")
        )
    with pytest.raises(ConfigurationError, match="not a distribution repository"):
        protection_groups.update_group(
            ctx, seeded.group, ProtectionGroupUpdate(distribution_repository=seeded.backup)
        )
    with pytest.raises(ConfigurationError, match="cannot hold backups"):
        jobs.create_job(
            ctx, JobCreate(name="j", repository=seeded.distribution, protection_groups=[seeded.group])
        )
    with pytest.raises(ConfigurationError, match="at least one"):
        jobs.create_job(ctx, JobCreate(name="j", repository=seeded.backup))
    with pytest.raises(NotFoundError):
        jobs.create_job(ctx, JobCreate(name="j", repository=seeded.backup, machines=["no-such-machine"]))
    for getter in (
        credentials.get_credential,
        repositories.get_repository,
        protection_groups.get_group,
        machines.get_machine,
        jobs.get_job,
        sessions.get_session,
        restore_points.get_restore_point,
    ):
        with pytest.raises(NotFoundError):
            getter(ctx, "does-not-exist")
    assert audit_count(ctx) == before


def test_deleting_things_in_use_is_refused(ctx: ServerContext, seeded: Seeded) -> None:
    jobs.create_job(ctx, JobCreate(name="j", repository=seeded.backup, protection_groups=[seeded.group]))
    with pytest.raises(ConflictError, match="still used"):
        credentials.delete_credential(ctx, seeded.credential)
    with pytest.raises(ConflictError, match="still used"):
        repositories.delete_repository(ctx, seeded.backup)
    with pytest.raises(ConflictError, match="used by job"):
        protection_groups.delete_group(ctx, seeded.group)
    jobs.delete_job(ctx, "j")
    add_machine(ctx, seeded.group, "web-1")
    protection_groups.delete_group(ctx, seeded.group)
    assert machines.list_machines(ctx).total == 0
    repositories.delete_repository(ctx, seeded.backup)
    repositories.delete_repository(ctx, seeded.distribution)
    credentials.delete_credential(ctx, seeded.credential)
    assert credentials.list_credentials(ctx).total == 0


def test_pagination(ctx: ServerContext, tmp_path: Path) -> None:
    for i in range(7):
        credentials.create_credential(ctx, CredentialCreate(name=f"c{i}", provider="local"))
    first = credentials.list_credentials(ctx, limit=3)
    last = credentials.list_credentials(ctx, limit=3, offset=6)
    assert (first.total, len(first.items), len(last.items)) == (7, 3, 1)
    assert [c.name for c in first.items] == ["c0", "c1", "c2"]
    with pytest.raises(ConfigurationError):
        credentials.list_credentials(ctx, limit=0)


def test_secrets_are_sealed_and_never_returned(ctx: ServerContext, seeded: Seeded, settings: object) -> None:
    cred = credentials.create_credential(
        ctx,
        CredentialCreate(
            name="aws", provider="aws", options={"region": "us-east-1", "aws_secret_access_key": SECRET}
        ),
    )
    assert "aws_secret_access_key" not in cred.options  # moved into the sealed part
    assert SECRET not in cred.model_dump_json()
    with ctx.db() as session:
        row = session.get(Credential, cred.id)
        assert row is not None and SECRET.encode() not in row.secret
        assert ctx.secrets.open(row.secret)["aws_secret_access_key"] == SECRET
        repo = session.scalar(select(Repository).where(Repository.name == seeded.backup))
        assert repo is not None and repo.password is not None and b"correct-horse" not in repo.password
    assert all(SECRET not in e.model_dump_json() for e in admin.list_audit(ctx).items)
    if ctx.engine.url.get_backend_name() == "sqlite":
        ctx.close()  # checkpoint the WAL so every byte is in the main file
        data = Path(str(ctx.engine.url.database)).read_bytes()
        assert SECRET.encode() not in data and b"correct-horse-battery" not in data
        assert b"aws" in data  # the row itself is there


def test_master_key_rotation_reseals_everything(ctx: ServerContext, seeded: Seeded, make_ctx: object) -> None:
    old_key = ctx.secrets.key_id
    rotation = admin.rotate_master_key(ctx)
    assert rotation.old_key_ids == [old_key] and rotation.new_key_id != old_key
    assert rotation.resealed == 3  # credential, repository password, server signing key
    with ctx.db() as session:
        row = session.scalar(select(Credential))
        assert row is not None
        assert row.secret[2 : 2 + row.secret[1]].decode() == rotation.new_key_id
    assert credentials.test_credential(ctx, seeded.credential).ok
    reopened = make_ctx()  # type: ignore[operator]
    assert reopened.secrets.key_id == rotation.new_key_id
    assert reopened.public_key_b64 == ctx.public_key_b64  # signing key survived the re-seal


def test_datetimes_are_utc_aware(ctx: ServerContext, seeded: Seeded) -> None:
    view = credentials.get_credential(ctx, seeded.credential)
    assert view.created_at.utcoffset() is not None and view.created_at.utcoffset().total_seconds() == 0


def test_backup_repository_is_initialised_and_checked(ctx: ServerContext, seeded: Seeded) -> None:
    """The local provider's storage is a real folder; the repository format is the engine's own."""
    repo = repositories.create_repository(
        ctx,
        RepositoryCreate(
            name="fresh",
            credential=seeded.credential,
            location="fresh-backups",
            password="another-long-password",  # type: ignore[arg-type]
        ),
    )
    assert repo.has_password and repo.purpose == "backup"
    assert (seeded.lab_dir / "storage" / "fresh-backups").is_dir()
    report = repositories.check_repository(ctx, "fresh")
    assert report.ok and report.problems == []
    with pytest.raises(ConflictError, match="already holds"):
        repositories.create_repository(
            ctx,
            RepositoryCreate(
                name="again",
                credential=seeded.credential,
                location="fresh-backups",
                password="another-long-password",  # type: ignore[arg-type]
            ),
        )
    with pytest.raises(ConfigurationError, match="only backups"):
        repositories.check_repository(ctx, seeded.distribution)


def test_secret_job_options_are_sealed_and_rotated(ctx: ServerContext, seeded: Seeded) -> None:
    options = {
        "password": "job-password-123",
        "notifications": {"email": {"to": ["a@b"], "smtp_host": "mx", "password": "smtp-pw-9"}},
    }
    job = jobs.create_job(
        ctx,
        JobCreate(name="sealed", repository=seeded.backup, protection_groups=[seeded.group], options=options),
    )
    assert job.options == {
        "password_sealed": "(sealed)",
        "notifications": {"email": {"to": ["a@b"], "smtp_host": "mx", "password_sealed": "(sealed)"}},
    }
    with ctx.db() as session:
        stored = session.scalar(select(BackupJob)).options  # type: ignore[union-attr]
    assert ctx.secrets.open(bytes.fromhex(stored["password_sealed"])) == "job-password-123"
    audit_text = "".join(e.model_dump_json() for e in admin.list_audit(ctx).items)
    assert "job-password-123" not in audit_text and "smtp-pw-9" not in audit_text
    rotation = admin.rotate_master_key(ctx)
    assert rotation.resealed == 5  # credential, repository password, two job secrets, signing key
    with ctx.db() as session:
        rotated = session.scalar(select(BackupJob)).options  # type: ignore[union-attr]
    assert rotated["password_sealed"] != stored["password_sealed"]
    assert (
        ctx.secrets.open(bytes.fromhex(rotated["notifications"]["email"]["password_sealed"])) == "smtp-pw-9"
    )


def test_secrets_never_reach_the_logs(
    ctx: ServerContext, seeded: Seeded, caplog: pytest.LogCaptureFixture
) -> None:
    """Every log record, including SQLAlchemy's statements with their parameters, is free of the secret."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    credentials.create_credential(
        ctx,
        CredentialCreate(name="logged", provider="local", secret={"api_secret": SECRET}),  # type: ignore[dict-item]
    )
    repositories.create_repository(
        ctx,
        RepositoryCreate(
            name="logged-repo",
            credential="logged",
            location="logged",
            password=SECRET,  # type: ignore[arg-type]
            initialize=False,
        ),
    )
    credentials.test_credential(ctx, "logged")
    admin.rotate_master_key(ctx)
    assert any("INSERT INTO credentials" in r.getMessage() for r in caplog.records)  # statements were logged
    assert SECRET not in caplog.text
