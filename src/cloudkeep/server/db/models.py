"""The domain model, in the seed's words.

The catalog lives here; backup data never does. Secrets (credential material, repository
passwords) are stored only as ciphertext sealed with the server master key.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from cloudkeep.server.clock import utcnow


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite stores naive text and would hand back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)  # naive = UTC
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime()}


class Credential(Base):
    """A cloud credential (AWS keys/role, Azure service principal, or local)."""

    __tablename__ = "credentials"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    provider: Mapped[str] = mapped_column(String(20))  # aws / azure / local
    secret: Mapped[bytes] = mapped_column(LargeBinary)  # sealed JSON with the master key
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)  # non-secret: endpoints, default region
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Repository(Base):
    """An object storage repository (backups) or a distribution repository (installers only)."""

    __tablename__ = "repositories"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    purpose: Mapped[str] = mapped_column(String(20))  # backup / distribution
    credential_id: Mapped[str] = mapped_column(ForeignKey("credentials.id"))
    location: Mapped[str] = mapped_column(String(500))  # bucket[/prefix], container[/prefix], or folder
    password: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # sealed repository password
    immutability_days: Mapped[int] = mapped_column(Integer, default=0)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)  # pack size, compression level, …
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    credential: Mapped[Credential] = relationship()


class ProtectionGroup(Base):
    """A protection group of type cloud machines."""

    __tablename__ = "protection_groups"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    credential_id: Mapped[str] = mapped_column(ForeignKey("credentials.id"))
    distribution_repository_id: Mapped[str] = mapped_column(ForeignKey("repositories.id"))
    regions: Mapped[list[Any]] = mapped_column(default=list)
    machine_ids: Mapped[list[Any]] = mapped_column(default=list)  # empty = all machines
    include_tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    exclude_ids: Mapped[list[Any]] = mapped_column(default=list)
    exclude_tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    rescan_schedule: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    auto_update: Mapped[bool] = mapped_column(default=True)
    # Opt-in: the installer may add Python with the OS package manager (dnf/yum/apt/zypper).
    install_python: Mapped[bool] = mapped_column(default=False)
    on_disappear: Mapped[str] = mapped_column(String(20), default="keep")  # keep / unmanage
    enabled: Mapped[bool] = mapped_column(default=True)
    last_rescan_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    credential: Mapped[Credential] = relationship()
    distribution_repository: Mapped[Repository] = relationship()
    machines: Mapped[list[DiscoveredMachine]] = relationship(back_populates="protection_group")


class DiscoveredMachine(Base):
    """A machine found by rescan, with its deployment state and the reason for any stop."""

    __tablename__ = "machines"
    __table_args__ = (UniqueConstraint("protection_group_id", "cloud_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    protection_group_id: Mapped[str] = mapped_column(ForeignKey("protection_groups.id"))
    cloud_id: Mapped[str] = mapped_column(String(300))  # instance id / VM resource id / local name
    name: Mapped[str] = mapped_column(String(300))
    platform: Mapped[str] = mapped_column(String(20))
    region: Mapped[str] = mapped_column(String(100), default="")
    cloud_state: Mapped[str] = mapped_column(String(50), default="")
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    facts: Mapped[dict[str, Any]] = mapped_column(default=dict)  # hostname, IP, OS, boot mode, PS version …
    # deployment: discovered → probing → … → deployed | skipped | failed | foreign | missing
    status: Mapped[str] = mapped_column(String(30), default="discovered")
    status_reason: Mapped[str] = mapped_column(Text, default="")
    agent_version: Mapped[str | None] = mapped_column(String(50), nullable=True)
    agent_public_key: Mapped[str | None] = mapped_column(Text, nullable=True)  # Ed25519, base64
    # what the agent registered with its keys at install; None (before levels existed) counts as 1
    agent_level: Mapped[int | None] = mapped_column(Integer, nullable=True)
    agent_queue: Mapped[str | None] = mapped_column(String(200), nullable=True)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_seen_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    protection_group: Mapped[ProtectionGroup] = relationship(back_populates="machines")
    steps: Mapped[list[DeploymentStep]] = relationship(
        order_by="DeploymentStep.seq", cascade="all, delete-orphan"
    )


class DeploymentStep(Base):
    """One recorded step of a machine's rescan state machine."""

    __tablename__ = "deployment_steps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"))
    session_id: Mapped[str | None] = mapped_column(ForeignKey("sessions.id"), nullable=True)
    seq: Mapped[int] = mapped_column(Integer)
    # probe / ownership / prerequisites / queues / upload / install / confirm
    step: Mapped[str] = mapped_column(String(50))
    outcome: Mapped[str] = mapped_column(String(20))  # ok / skipped / failed
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)


class BackupJob(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    repository_id: Mapped[str] = mapped_column(ForeignKey("repositories.id"))
    protection_group_ids: Mapped[list[Any]] = mapped_column(default=list)
    machine_ids: Mapped[list[Any]] = mapped_column(default=list)  # explicit machines besides groups
    mode: Mapped[str] = mapped_column(String(20), default="file")  # entire / volume / file
    includes: Mapped[list[Any]] = mapped_column(default=list)  # paths / volumes / globs
    excludes: Mapped[list[Any]] = mapped_column(default=list)
    schedule: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    retention: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # scripts, throttling, compression, notifications
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enabled: Mapped[bool] = mapped_column(default=True)
    next_run_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobSession(Base):
    """One run of anything long: a backup job, a rescan, a restore."""

    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(20))  # backup / rescan / restore / check
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    protection_group_id: Mapped[str | None] = mapped_column(ForeignKey("protection_groups.id"), nullable=True)
    # pending / running / success / warning / failed / stopped
    state: Mapped[str] = mapped_column(String(20), default="pending")
    reason: Mapped[str] = mapped_column(Text, default="")
    trigger: Mapped[str] = mapped_column(String(20), default="manual")  # manual / schedule / retry / chained
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    stop_requested: Mapped[bool] = mapped_column(default=False)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tasks: Mapped[list[SessionTask]] = relationship(cascade="all, delete-orphan")


class SessionTask(Base):
    """A session's work on one machine, with its statistics and log."""

    __tablename__ = "session_tasks"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)  # a session's page
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"))
    state: Mapped[str] = mapped_column(String(20), default="pending")
    reason: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    bytes_read: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_transferred: Mapped[int] = mapped_column(BigInteger, default=0)
    files: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)  # dedup/compression ratio, speed, bottleneck
    log: Mapped[list[Any]] = mapped_column(default=list)
    command_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class RestorePoint(Base):
    """A catalog entry pointing at a restore-point manifest in a repository."""

    __tablename__ = "restore_points"
    __table_args__ = (UniqueConstraint("repository_id", "snapshot_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    repository_id: Mapped[str] = mapped_column(ForeignKey("repositories.id"))
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"), index=True)  # a machine's points
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    session_id: Mapped[str | None] = mapped_column(ForeignKey("sessions.id"), nullable=True)
    snapshot_id: Mapped[str] = mapped_column(String(100))  # id of the manifest in the repository
    mode: Mapped[str] = mapped_column(String(20), default="file")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    files: Mapped[int] = mapped_column(Integer, default=0)
    retain_until: Mapped[datetime | None] = mapped_column(nullable=True)  # immutability
    gfs: Mapped[list[Any]] = mapped_column(default=list)  # weekly / monthly / yearly flags
    removed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # What was accepted at backup time (server/catalog.py): the keyed hash of the manifest's plaintext
    # (its id, for content-addressed manifests) and its root tree. Browse and restore refuse a point
    # whose manifest no longer matches; NULL for points recorded before, pinned on first use.
    manifest_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    root_tree: Mapped[str | None] = mapped_column(String(64), nullable=True)


class CommandRecord(Base):
    """Every command the dispatcher sent, the channel it chose, and its result (at most once)."""

    __tablename__ = "commands"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # message id = idempotency key
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"))
    kind: Mapped[str] = mapped_column(String(50))
    channel: Mapped[str] = mapped_column(String(20))  # queue / ssm / runcommand / local
    state: Mapped[str] = mapped_column(String(20), default="sent")  # sent / running / done / failed / expired
    task_id: Mapped[str | None] = mapped_column(ForeignKey("session_tasks.id"), nullable=True, index=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    sent_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # The envelope's expiry: the machine refuses the command after it, so an open record past it is
    # swept to ``expired`` (``dispatcher.expire_commands``) instead of staying ``sent`` forever.
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True, index=True)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)  # SHA-256 of the token
    scope: Mapped[str] = mapped_column(String(20))  # admin / read-only
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Lease(Base):
    """A named lease held by one server worker (scheduled work is started by exactly one)."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[datetime] = mapped_column()


class ConsumerProgress(Base):
    """How far one process's consumers have read an account's server queue (``server/read_point.py``).

    One row per (credential, process): a job runner in another process reads it to give machines
    the same backlog grace the consumers' own process gives them.
    """

    __tablename__ = "consumer_progress"
    credential_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(100), primary_key=True)
    read_point: Mapped[datetime | None] = mapped_column(nullable=True)  # None: keeping up
    reported_at: Mapped[datetime] = mapped_column()


class ServerSetting(Base):
    """Server-wide values: the server id, the server's signing key (sealed), the bundle version."""

    __tablename__ = "server_settings"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))  # e.g. protection_group.create
    target: Mapped[str] = mapped_column(String(300), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)  # never secrets
