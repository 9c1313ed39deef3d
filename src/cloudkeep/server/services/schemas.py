"""The one schema of every API body: what services accept and return, and what the CLI renders.

Views never carry secrets: credential material and repository passwords are write-only fields of
the ``…Create`` models and are absent from every ``…View``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, field_validator

from cloudkeep.server.jobs.options import JobOptions

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NAME_PATTERN)]
Provider = Literal["aws", "azure", "local"]
Purpose = Literal["backup", "distribution"]
BackupMode = Literal["entire", "volume", "file"]
T = TypeVar("T")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", from_attributes=True)


class Page(BaseModel, Generic[T]):
    """One page of a list: ``items`` plus what is needed to fetch the next."""

    items: list[T]
    total: int
    limit: int
    offset: int


class SessionStarted(Model):
    session_id: str


# --- credentials -----------------------------------------------------------------------------


class CredentialCreate(Model):
    name: Name
    provider: Provider
    secret: dict[str, SecretStr] = Field(default_factory=dict, description="Write-only credential material.")
    options: dict[str, Any] = Field(default_factory=dict, description="Non-secret: endpoints, region …")
    description: str = Field(default="", max_length=2000)


class CredentialView(Model):
    id: str
    name: str
    provider: str
    options: dict[str, Any]
    description: str
    created_at: datetime


class CredentialTest(Model):
    credential_id: str
    name: str = ""
    ok: bool
    missing_permissions: list[str]
    machines_seen: int | None
    error: str | None = None


# --- repositories ----------------------------------------------------------------------------


class RepositoryCreate(Model):
    name: Name
    purpose: Purpose = "backup"
    credential: str = Field(min_length=1, description="Credential id or name.")
    location: str = Field(min_length=1, max_length=500, description="bucket[/prefix] or a folder")
    password: SecretStr | None = Field(default=None, description="Write-only; backup repositories.")
    immutability_days: int = Field(default=0, ge=0, le=36500)
    options: dict[str, Any] = Field(default_factory=dict)
    initialize: bool = Field(default=True, description="Create the container and the repository format.")


class RepositoryView(Model):
    id: str
    name: str
    purpose: str
    credential_id: str
    location: str
    immutability_days: int
    options: dict[str, Any]
    has_password: bool
    created_at: datetime


class RepositoryCheck(Model):
    repository_id: str
    ok: bool
    problems: list[str]


class RepositoryRepairRequest(Model):
    index: bool = True  # recover index entries from pack headers; set damaged index files aside
    snapshots: bool = True  # set damaged manifests aside
    rewrite: bool = False  # write restore points that need missing data again, without it


class RepositoryRepair(Model):
    repository_id: str
    changed: bool
    packs_recovered: int = 0
    packs_dropped: list[str] = Field(default_factory=list)
    moved_aside: list[str] = Field(default_factory=list)
    rewritten: dict[str, str] = Field(default_factory=dict)
    dropped_paths: dict[str, list[str]] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)


class StoreCheckView(Model):
    name: str
    ok: bool
    detail: str
    action: str = ""


class StoreVerification(Model):
    """``cloudkeep repository verify``: the store's guarantees, each checked on the store."""

    repository_id: str
    location: str
    ok: bool
    checks: list[StoreCheckView]


# --- protection groups -----------------------------------------------------------------------


class _GroupFields(Model):
    description: str | None = Field(default=None, max_length=2000)
    regions: list[str] | None = None
    machine_ids: list[str] | None = None
    include_tags: dict[str, str] | None = None
    exclude_ids: list[str] | None = None
    exclude_tags: dict[str, str] | None = None
    rescan_schedule: dict[str, Any] | None = None
    auto_update: bool | None = None
    install_python: bool | None = None
    on_disappear: Literal["keep", "unmanage"] | None = None
    enabled: bool | None = None


class ProtectionGroupCreate(_GroupFields):
    name: Name
    credential: str = Field(min_length=1, description="Credential id or name.")
    distribution_repository: str = Field(min_length=1, description="Distribution repository id or name.")


class ProtectionGroupUpdate(_GroupFields):
    name: Name | None = None
    distribution_repository: str | None = None


class ProtectionGroupView(Model):
    id: str
    name: str
    description: str
    credential_id: str
    distribution_repository_id: str
    regions: list[str]
    machine_ids: list[str]
    include_tags: dict[str, str]
    exclude_ids: list[str]
    exclude_tags: dict[str, str]
    rescan_schedule: dict[str, Any] | None
    auto_update: bool
    install_python: bool = False
    on_disappear: str
    enabled: bool
    last_rescan_at: datetime | None
    created_at: datetime
    machine_count: int = 0


# --- machines --------------------------------------------------------------------------------


class DeploymentStepView(Model):
    seq: int
    step: str
    outcome: str
    detail: str
    at: datetime
    session_id: str | None


class MachineView(Model):
    id: str
    protection_group_id: str
    cloud_id: str
    name: str
    platform: str
    region: str
    cloud_state: str
    tags: dict[str, Any]
    facts: dict[str, Any]
    status: str
    status_reason: str
    agent_version: str | None
    last_heartbeat_at: datetime | None
    last_seen_at: datetime | None
    created_at: datetime


class MachineDetail(MachineView):
    steps: list[DeploymentStepView]


# --- jobs ------------------------------------------------------------------------------------


class Retention(Model):
    """GFS-style retention: keep the newest N, then one per day/week/month/year, or everything recent."""

    keep_last: int | None = Field(default=None, ge=0)
    keep_daily: int | None = Field(default=None, ge=0)
    keep_weekly: int | None = Field(default=None, ge=0)
    keep_monthly: int | None = Field(default=None, ge=0)
    keep_yearly: int | None = Field(default=None, ge=0)
    keep_within_days: int | None = Field(default=None, ge=0)


class _JobFields(Model):
    description: str | None = Field(default=None, max_length=2000)
    protection_groups: list[str] | None = Field(default=None, description="Protection group ids or names.")
    machines: list[str] | None = Field(default=None, description="Machine ids (besides the groups).")
    mode: BackupMode | None = None
    includes: list[str] | None = None
    excludes: list[str] | None = None
    schedule: dict[str, Any] | None = None
    retention: Retention | None = None
    options: JobOptions | None = Field(default=None, description="Typed: unknown options are refused.")
    enabled: bool | None = None

    @field_validator("includes", "excludes")
    @classmethod
    def _no_empty_paths(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not item.strip() for item in value):
            raise ValueError("paths must not be empty")
        return value


class JobCreate(_JobFields):
    name: Name
    repository: str = Field(min_length=1, description="Backup repository id or name.")


class JobUpdate(_JobFields):
    name: Name | None = None
    repository: str | None = None
    clear_schedule: bool = Field(default=False, description="Remove the schedule (manual runs only).")


class JobView(Model):
    id: str
    name: str
    description: str
    repository_id: str
    protection_group_ids: list[str]
    machine_ids: list[str]
    mode: str
    includes: list[str]
    excludes: list[str]
    schedule: dict[str, Any] | None
    retention: dict[str, Any]
    options: dict[str, Any]
    enabled: bool
    next_run_at: datetime | None
    created_at: datetime


class JobStart(Model):
    machines: list[str] | None = None


# --- sessions --------------------------------------------------------------------------------


class SessionTaskView(Model):
    id: str
    machine_id: str
    machine_name: str = ""
    state: str
    reason: str
    started_at: datetime | None
    ended_at: datetime | None
    bytes_read: int
    bytes_transferred: int
    files: int
    progress: float
    stats: dict[str, Any]


class SessionView(Model):
    id: str
    kind: str
    job_id: str | None
    protection_group_id: str | None
    state: str
    reason: str
    trigger: str
    attempt: int
    stop_requested: bool
    started_at: datetime | None
    ended_at: datetime | None
    created_at: datetime
    stats: dict[str, Any]


class SessionDetail(SessionView):
    tasks: list[SessionTaskView]
    log: list[dict[str, Any]] = Field(default_factory=list, description="Per-task log lines, oldest first.")


# --- restore points and restores -------------------------------------------------------------


class RestorePointView(Model):
    id: str
    repository_id: str
    machine_id: str
    job_id: str | None
    session_id: str | None
    snapshot_id: str
    mode: str
    created_at: datetime
    size: int
    files: int
    retain_until: datetime | None
    gfs: list[str]
    removed_at: datetime | None


class BrowseResult(Model):
    entries: list[dict[str, Any]] = Field(description="path, type, size, mode, mtime per entry.")
    truncated: bool = False


class SearchHit(Model):
    model_config = ConfigDict(extra="allow")
    restore_point_id: str
    machine_id: str
    path: str


class FileRestoreRequest(Model):
    paths: list[str] | None = None
    target_machine: str | None = Field(default=None, description="Machine id; default: the original machine.")
    target_path: str | None = None
    in_place: bool = False


class VolumeRestoreRequest(Model):
    target_path: str = Field(min_length=1)
    target_machine: str | None = None


# --- tokens and audit ------------------------------------------------------------------------


class TokenCreate(Model):
    name: Name
    scope: Literal["admin", "read-only"] = "read-only"


class TokenView(Model):
    id: str
    name: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(TokenView):
    token: str = Field(description="Shown once; only its hash is stored.")


class AuditView(Model):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


class ServerInfo(Model):
    server_id: str
    version: str
    database: str
    public_key: str
    master_key_id: str
    counts: dict[str, int]


class KeyRotation(Model):
    old_key_ids: list[str]
    new_key_id: str
    resealed: int
