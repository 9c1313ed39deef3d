"""The API bodies of repository maintenance: check, repair, store verification, stats, forget, prune
and password change (split from ``schemas``, which holds the catalog's bodies; same ``Model`` base)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from cloudkeep.server.services.schemas import Model


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


class RepositoryStats(Model):
    """``cloudkeep repository stats``: what the repository holds, read from the store."""

    repository_id: str
    snapshots: int
    catalog_restore_points: int
    packs: int
    stored_bytes: int
    index_files: int
    keys: int


class ForgetRequest(Model):
    """Which restore points to keep (the others are forgotten; data goes with the next prune)."""

    keep_last: int = Field(default=0, ge=0)
    keep_daily: int = Field(default=0, ge=0)
    keep_weekly: int = Field(default=0, ge=0)
    keep_monthly: int = Field(default=0, ge=0)
    keep_yearly: int = Field(default=0, ge=0)
    keep_within_days: int | None = Field(default=None, ge=0)
    dry_run: bool = False


class ForgetReport(Model):
    repository_id: str
    session_id: str | None  # None for a dry run: nothing was written
    dry_run: bool
    kept: list[str]
    removed: list[str]


class PruneReport(Model):
    repository_id: str
    session_id: str
    packs_deleted: int
    packs_repacked: int
    packs_marked: int
    bytes_freed: int
    warnings: list[str]


class PasswordChange(Model):
    new_password: SecretStr = Field(description="Write-only; at least 8 characters.")


class MaintenanceDone(Model):
    """A maintenance step that wrote to a repository, with the session that records it."""

    target_id: str
    session_id: str
    detail: str
