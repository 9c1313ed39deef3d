"""The one schema of every API body: what services accept and return, and what the CLI renders
(repository maintenance's bodies are in ``maintenance_schemas``, on the same ``Model``).

Views never carry secrets: credential material and repository passwords are write-only fields of
the ``…Create`` models and are absent from every ``…View``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from cloudkeep.protocol.bodies import Retention
from cloudkeep.providers.registry import provider_kinds
from cloudkeep.server.jobs.options import JobOptions
from cloudkeep.server.scheduling.schedule_spec import ScheduledRun, schedule_json_schema

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NAME_PATTERN)]


def _known_provider(kind: str) -> str:
    """Provider names come from the registry, so a new cloud needs no edit here."""
    if kind not in provider_kinds():
        names = [repr(name) for name in provider_kinds()]
        raise PydanticCustomError(
            "literal_error",
            "Input should be {expected}",
            {"expected": f"{', '.join(names[:-1])} or {names[-1]}"},
        )
    return kind


Provider = Annotated[
    str, AfterValidator(_known_provider), Field(json_schema_extra={"enum": list(provider_kinds())})
]
Purpose = Literal["backup", "distribution"]
BackupMode = Literal["entire", "volume", "file"]
T = TypeVar("T")
# Accepted and stored as a dict that scheduling/schedule.py validates (naming the bad field); documented
# in the spec with every field (ScheduleSpec) instead of a bare object.
ScheduleDict = Annotated[dict[str, Any] | None, WithJsonSchema(schedule_json_schema())]


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
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "prod-aws",
                    "provider": "aws",
                    "secret": {"aws_access_key_id": "AKIA…", "aws_secret_access_key": "…"},
                    "options": {"region": "eu-west-1", "ssm_output_bucket": "acme-cloudkeep-ssm"},
                }
            ]
        }
    )
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


class CredentialUpdate(Model):
    """New key material (replaces the whole secret), options or description of a credential."""

    secret: dict[str, SecretStr] | None = Field(
        default=None, description="Write-only; replaces the fields given, keeps the others."
    )
    options: dict[str, Any] | None = None
    description: str | None = Field(default=None, max_length=2000)


class CredentialTest(Model):
    credential_id: str
    name: str = ""
    ok: bool
    missing_permissions: list[str]
    machines_seen: int | None
    error: str | None = None
    problems: list[str] = Field(
        default_factory=list, description="Provider options that will make an operation fail later."
    )
    hint: str | None = Field(default=None, description="What to do about the error or what is missing.")


# --- repositories ----------------------------------------------------------------------------


class RepositoryCreate(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "main",
                    "credential": "prod-aws",
                    "location": "acme-backups/cloudkeep",
                    "password": "correct horse battery staple",
                    "immutability_days": 30,
                }
            ]
        }
    )
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


class RepositoryUpdate(Model):
    """What can change without orphaning data (the location, purpose and password cannot)."""

    name: Name | None = None
    credential: str | None = Field(default=None, min_length=1, description="Another credential id or name.")
    options: dict[str, Any] | None = Field(default=None, description="Merged; null removes a key.")


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
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "web-fleet",
                    "credential": "prod-aws",
                    "distribution_repository": "dist",
                    "regions": ["eu-west-1"],
                    "include_tags": {"backup": "daily"},
                    "rescan_schedule": {"kind": "daily", "time": "01:00"},
                }
            ]
        }
    )
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
    agent_level: int | None = None  # what the agent registered at install or reports in heartbeats
    upgrade_reason: str | None = Field(
        default=None,
        description="Why the agent must be upgraded (`cloudkeep machine upgrade`); None: current.",
    )
    last_heartbeat_at: datetime | None
    last_seen_at: datetime | None
    created_at: datetime


class MachineDetail(MachineView):
    steps: list[DeploymentStepView]


class MachineUpgrade(Model):
    """Which machines to upgrade to the server's bundle: named ones, every one of a group, or both."""

    machines: list[str] | None = Field(default=None, description="Machine ids, cloud ids or names.")
    group: str | None = Field(default=None, description="A protection group (id or name): all its machines.")


class UpgradeStarted(Model):
    session_ids: list[str]  # one rescan session per protection group


# --- jobs (Retention: the protocol model, one policy shape from API to machine) ----------------------


class _JobFields(Model):
    description: str | None = Field(default=None, max_length=2000)
    protection_groups: list[str] | None = Field(default=None, description="Protection group ids or names.")
    machines: list[str] | None = Field(default=None, description="Machine ids (besides the groups).")
    mode: BackupMode | None = None
    includes: list[str] | None = None
    excludes: list[str] | None = None
    schedule: ScheduleDict = None
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
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "nightly",
                    "repository": "main",
                    "protection_groups": ["web-fleet"],
                    "mode": "file",
                    "includes": ["/etc", "/var/www"],
                    "excludes": ["*.tmp"],
                    "schedule": {"kind": "cron", "expression": "0 3 * * 1-5", "timezone": "Europe/Paris"},
                    "retention": {"keep_daily": 7, "keep_weekly": 4},
                    "options": {"bandwidth_limit": "20MiB", "parallel_machines": 8},
                }
            ]
        }
    )
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
    schedule: ScheduleDict
    retention: dict[str, Any]
    options: dict[str, Any]
    enabled: bool
    next_run_at: datetime | None
    next_runs: list[ScheduledRun] = Field(
        default_factory=list, description="The next starts, in UTC and in the schedule's time zone."
    )
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
    tasks: list[SessionTaskView] = Field(description="One page of the tasks, in start order.")
    log: list[dict[str, Any]] = Field(
        default_factory=list, description="Log lines of this page's tasks, oldest first."
    )
    task_total: int = Field(0, description="All the session's tasks; page on with task_offset + task_limit.")
    task_counts: dict[str, int] = Field(default_factory=dict, description="All the session's tasks by state.")
    task_limit: int = 0
    task_offset: int = 0


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
