"""One body model per message kind (protocol version 1).

Secrets are never in a body: the ``repository`` of backup/restore/… commands travels in the
envelope's ``sealed`` field (see ``RepositoryAccess``), opened only by the recipient machine.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RepositoryAccess(Body):
    """What the agent needs to open the repository: store URL + scoped options, and its keys (sealed).

    Keys: the password (formats 1-2), or for format 3 a writer bundle (``WriterBundle.to_json``:
    back up and dedup, decrypt nothing) plus, for a restore or browse, ``grants``: the content keys
    of exactly the manifest and packs it reads (object key → base64 key).
    """

    store_url: str
    options: dict[str, Any] = Field(default_factory=dict)
    password: str | None = None
    writer: dict[str, Any] | None = None
    grants: dict[str, str] | None = None
    grants_object: str | None = None  # too many keys for one message: a one-off object holds them,
    grants_key: str | None = None  # sealed (AES-256-GCM, its name as associated data) under this key
    expires_at: datetime | None = None  # when the scoped credentials in ``options`` stop working
    # ``writers/<machine id>/``: open the repository writer-scoped (credentials may write only there)
    writer_prefix: str | None = None

    @model_validator(mode="after")
    def _one_key(self) -> RepositoryAccess:
        if (self.password is None) == (self.writer is None):
            raise ValueError("repository access carries either a password or a writer bundle")
        if self.writer is not None and not self.writer_prefix:
            raise ValueError("a writer bundle needs its writer_prefix")
        return self


class Retention(Body):
    """A retention policy as the API and the wire carry it (the engine's ``RetentionPolicy``).

    GFS-style: keep the newest N, then one per day/week/month/year, or everything recent. Checked
    further, and converted, by ``RetentionPolicy.from_mapping`` (the one converter).
    """

    keep_last: int | None = Field(default=None, ge=0)
    keep_daily: int | None = Field(default=None, ge=0)
    keep_weekly: int | None = Field(default=None, ge=0)
    keep_monthly: int | None = Field(default=None, ge=0)
    keep_yearly: int | None = Field(default=None, ge=0)
    keep_within_days: int | None = Field(default=None, ge=0)


# --- server → machine commands ----------------------------------------------------------------


class Ping(Body):
    pass


class RunScript(Body):
    shell: Literal["shell", "powershell"] = "shell"
    script: str
    timeout: float = Field(default=600.0, gt=0, le=48 * 3600)


class Backup(Body):
    mode: Literal["files", "volume", "entire"] = "files"
    sources: list[str] = Field(default_factory=list)
    includes: list[str] = Field(default_factory=list)
    excludes: list[str] = Field(default_factory=list)
    hostname: str
    tags: list[str] = Field(default_factory=list)
    retain_until: datetime | None = None
    bandwidth_limit: int | None = None  # bytes per second
    compression_level: int | None = None
    pre_script: str | None = None
    post_script: str | None = None
    script_timeout: float = 600.0
    retention: Retention | None = None
    prune: bool = False


class Restore(Body):
    snapshot_id: str
    paths: list[str] | None = None
    target: str
    in_place: bool = False


class RestoreVolume(Body):
    snapshot_id: str
    target: str


class Browse(Body):
    snapshot_id: str
    path: str = "/"
    recursive: bool = False
    pattern: str | None = None
    limit: int = Field(default=1000, gt=0, le=5000)  # keeps the result under the queue message limit


class RetentionCommand(Body):
    """Forget the restore points the server decided on (``forget``: snapshot ids of ``hostname``).

    A command with only ``policy`` comes from an older server: the machine then plans itself.
    """

    forget: list[str] | None = None
    policy: Retention | None = None
    prune: bool = False
    hostname: str | None = None

    @model_validator(mode="after")
    def _says_what_to_forget(self) -> RetentionCommand:
        if self.forget is None and self.policy is None:
            raise ValueError("a retention command needs 'forget' (snapshot ids) or 'policy'")
        return self


class Check(Body):
    read_data_subset: float | None = Field(default=None, ge=0, le=1)  # fraction of packs to read back


class UpdateCredentials(Body):
    command_id: str


class Cancel(Body):
    """Stop a running task at its next file/chunk boundary; it then reports ``cancelled``."""

    command_id: str


# --- machine → server -------------------------------------------------------------------------


class Result(Body):
    command_id: str
    ok: bool
    error: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)


class _Report(Body):
    """A report a machine sends on its own (heartbeat, progress): fields a newer agent adds are
    ignored, not refused, so an agent upgraded before its server keeps being seen as alive. Known
    fields are still validated, the envelope is still signed and size-bounded."""

    model_config = ConfigDict(extra="ignore")


class Progress(_Report):
    command_id: str
    bytes_read: int = 0
    bytes_total: int | None = None
    files: int = 0
    bytes_uploaded: int = 0
    rate: float = 0.0  # bytes read per second
    eta_seconds: float | None = None
    current_path: str | None = None


class Heartbeat(_Report):
    services: dict[str, Any] = Field(default_factory=dict)
    version: str
    # The agent level of the code sending it (``machine.keys.AGENT_LEVEL``), so the server sees an
    # upgrade or downgrade without a rescan; agents from before it send none (still accepted).
    agent_level: int | None = Field(default=None, ge=1, le=1000, strict=True)  # "2" or true: refused


# --- what a command's ``Result.payload`` holds (machine → server) -------------------------------
#
# A result crosses a trust boundary: the server validates it against these models before reading
# it, refusing unknown fields and oversized values. Every field a machine of an earlier version
# may have left out has a default, so an older machine's result still reads as it did; one that
# sends something else (another shape, an extra field) fails its task with a clear reason.

_ID = 128  # snapshot ids, digests, tree ids: hex strings far shorter than this
_TEXT = 8 * 1024  # one warning or problem line
_MANY = 10_000  # list items; a result must fit one queue message (64 KiB) anyway
ResultId = Annotated[str, Field(max_length=_ID)]
ResultLine = Annotated[str, Field(max_length=_TEXT)]


class BackupResult(Body):
    snapshot_id: str | None = Field(default=None, max_length=_ID)  # None: refused as "no restore point"
    snapshot_time: str | None = Field(default=None, max_length=64)  # ISO 8601; unreadable → "now"
    manifest_digest: str | None = Field(default=None, max_length=_ID)
    root_tree: str | None = Field(default=None, max_length=_ID)
    stats: dict[str, Any] = Field(default_factory=dict, max_length=200)
    forgotten: list[ResultId] = Field(default_factory=list, max_length=_MANY)
    warnings: list[ResultLine] = Field(default_factory=list, max_length=_MANY)
    errors: list[dict[str, Any]] = Field(default_factory=list, max_length=_MANY)  # entries not read
    errors_total: int = Field(default=0, ge=0)


class RetentionResult(Body):
    kept: list[ResultId] = Field(default_factory=list, max_length=_MANY)
    removed: list[ResultId] = Field(default_factory=list, max_length=_MANY)


class CheckResult(Body):
    ok: bool | None = None  # None (an older machine): healthy exactly when no problem is listed
    problems: list[ResultLine] = Field(default_factory=list, max_length=1000)

    @property
    def healthy(self) -> bool:
        return not self.problems if self.ok is None else self.ok


class RestoreResult(Body):
    files: int = Field(default=1, ge=0)  # 1 when left out, as the session reason always read it
    bytes: int = Field(default=0, ge=0)
    verified: bool = True
    verified_files: int | None = Field(default=None, ge=0)
    warnings: list[ResultLine] = Field(default_factory=list, max_length=_MANY)


class RestoreVolumeResult(Body):
    bytes: int = Field(default=0, ge=0)
    verified: bool = True


class BrowseResult(Body):
    entries: list[dict[str, Any]] = Field(default_factory=list, max_length=5000)
    truncated: bool = False


class PingResult(Body):
    version: str | None = Field(default=None, max_length=64)
    services: dict[str, dict[str, Any]] = Field(default_factory=dict, max_length=16)  # name → state, pid


_OUTPUT = 20 * 1024  # a run_script stream: the machine sends its last 16 KiB, a marker and a timeout line


class RunScriptResult(Body):
    exit_code: int
    stdout: str = Field(default="", max_length=_OUTPUT)
    stderr: str = Field(default="", max_length=_OUTPUT)
    timed_out: bool = False


class DeliveredResult(Body):
    """What ``cancel`` and ``update_credentials`` answer: the command they went to (and its state then)."""

    delivered_to: str = Field(max_length=_ID)
    target_state: str | None = Field(default=None, max_length=32)


RESULT_BODIES: dict[str, type[Body]] = {
    "ping": PingResult,
    "run_script": RunScriptResult,
    "update_credentials": DeliveredResult,
    "cancel": DeliveredResult,
    "backup": BackupResult,
    "retention": RetentionResult,
    "check": CheckResult,
    "restore": RestoreResult,
    "restore_volume": RestoreVolumeResult,
    "browse": BrowseResult,
}


COMMAND_BODIES: dict[str, type[Body]] = {
    "ping": Ping,
    "run_script": RunScript,
    "backup": Backup,
    "restore": Restore,
    "restore_volume": RestoreVolume,
    "browse": Browse,
    "retention": RetentionCommand,
    "check": Check,
    "update_credentials": UpdateCredentials,
    "cancel": Cancel,
}
REPORT_BODIES: dict[str, type[Body]] = {"result": Result, "progress": Progress, "heartbeat": Heartbeat}
BODIES: dict[str, type[Body]] = {**COMMAND_BODIES, **REPORT_BODIES}
# Kinds whose sealed field must hold a RepositoryAccess.
NEEDS_REPOSITORY = frozenset(
    {"backup", "restore", "restore_volume", "browse", "retention", "check", "update_credentials"}
)
