"""Every client operation, stated once: its REST method and path, its result, the service behind it.

``api/routes.py`` builds the FastAPI route of each ``Op`` (parameters from the service's signature),
``HttpClient`` sends it (path parameters by name, a model as the JSON body, the rest as the query)
and ``EmbeddedClient`` calls the service in-process. ``Client`` gives each one a typed method.

This module imports only the schemas: the remote CLI never loads the services or the database.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cloudkeep.server.services.maintenance_schemas import (
    ForgetReport,
    MaintenanceDone,
    PruneReport,
    RepositoryCheck,
    RepositoryRepair,
    RepositoryStats,
    StoreVerification,
)
from cloudkeep.server.services.schemas import (
    AuditView,
    BrowseResult,
    CredentialTest,
    CredentialView,
    JobView,
    KeyRotation,
    MachineDetail,
    MachineView,
    Model,
    Page,
    ProtectionGroupView,
    RepositoryView,
    RestorePointView,
    SearchHit,
    ServerInfo,
    SessionDetail,
    SessionStarted,
    SessionView,
    TokenCreated,
    TokenView,
    UpgradeStarted,
)

R = TypeVar("R")
NoContent = type(None)
_SERVICES = "cloudkeep.server.services"


class StoppedSessions(Model):
    session_ids: list[str]


class DownloadRequest(Model):
    paths: list[str]


class ExportRequest(Model):
    image_format: str = "raw"  # raw | vhd; the server says what it supports


EXPORT_HEADERS = {"disk_bytes": "X-Cloudkeep-Disk-Bytes", "verified": "X-Cloudkeep-Verified"}


@dataclass(frozen=True)
class Op(Generic[R]):
    """One operation. ``service`` is ``"<module>.<function>"`` under ``cloudkeep.server.services``,
    called as ``function(ctx, **args)`` (plus ``actor=`` when ``audited``); its parameter names are
    the API's. ``result`` is what the service returns and the response body (``NoContent``: 204)."""

    name: str  # the route's function name, so OpenAPI operation ids stay as they were
    method: str
    path: str
    service: str
    result: Any  # type[R]; Any because ``list[X]`` and ``None`` are no classes for mypy
    tag: str
    admin: bool = True
    audited: bool = False
    status: int = 200
    full_body: bool = False  # send defaults too, not only the fields that were set
    constraints: dict[str, dict[str, Any]] = field(default_factory=dict)  # query name → Query(**…)

    @property
    def path_params(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]


def service_of(op: Op[Any]) -> Callable[..., Any]:
    """The service function an op names, imported on first use (the remote CLI never needs it)."""
    module, name = op.service.rsplit(".", 1)
    function: Callable[..., Any] = getattr(importlib.import_module(f"{_SERVICES}.{module}"), name)
    return function


# Each constant is typed with its result, so ``Client.call(op)`` returns the right type.
# credentials
LIST_CREDENTIALS: Op[Page[CredentialView]] = Op(
    "list_credentials", "GET", "/credentials", "credentials.list_credentials", Page[CredentialView],
    "credentials", admin=False,
)  # fmt: skip
CREATE_CREDENTIAL: Op[CredentialView] = Op(
    "create_credential", "POST", "/credentials", "credentials.create_credential", CredentialView,
    "credentials", audited=True, status=201,
)  # fmt: skip
GET_CREDENTIAL: Op[CredentialView] = Op(
    "get_credential", "GET", "/credentials/{ref}", "credentials.get_credential", CredentialView,
    "credentials", admin=False,
)  # fmt: skip
UPDATE_CREDENTIAL: Op[CredentialView] = Op(
    "update_credential", "PATCH", "/credentials/{ref}", "credentials.update_credential", CredentialView,
    "credentials", audited=True,
)  # fmt: skip
DELETE_CREDENTIAL: Op[None] = Op(
    "delete_credential", "DELETE", "/credentials/{ref}", "credentials.delete_credential", NoContent,
    "credentials", audited=True, status=204,
)  # fmt: skip
TEST_CREDENTIAL: Op[CredentialTest] = Op(
    "test_credential", "POST", "/credentials/{ref}/test", "credentials.test_credential", CredentialTest,
    "credentials",
)  # fmt: skip

# repositories
LIST_REPOSITORIES: Op[Page[RepositoryView]] = Op(
    "list_repositories", "GET", "/repositories", "repositories.list_repositories", Page[RepositoryView],
    "repositories", admin=False,
)  # fmt: skip
CREATE_REPOSITORY: Op[RepositoryView] = Op(
    "create_repository", "POST", "/repositories", "repositories.create_repository", RepositoryView,
    "repositories", audited=True, status=201,
)  # fmt: skip
GET_REPOSITORY: Op[RepositoryView] = Op(
    "get_repository", "GET", "/repositories/{ref}", "repositories.get_repository", RepositoryView,
    "repositories", admin=False,
)  # fmt: skip
UPDATE_REPOSITORY: Op[RepositoryView] = Op(
    "update_repository", "PATCH", "/repositories/{ref}", "repositories.update_repository", RepositoryView,
    "repositories", audited=True,
)  # fmt: skip
DELETE_REPOSITORY: Op[None] = Op(
    "delete_repository", "DELETE", "/repositories/{ref}", "repositories.delete_repository", NoContent,
    "repositories", audited=True, status=204,
)  # fmt: skip
CHECK_REPOSITORY: Op[RepositoryCheck] = Op(
    "check_repository", "POST", "/repositories/{ref}/check", "repositories.check_repository",
    RepositoryCheck, "repositories", constraints={"read_data_subset": {"gt": 0, "le": 1}},
)  # fmt: skip
REPAIR_REPOSITORY: Op[RepositoryRepair] = Op(
    "repair_repository", "POST", "/repositories/{ref}/repair", "repositories.repair_repository",
    RepositoryRepair, "repositories", audited=True,
)  # fmt: skip
VERIFY_STORE: Op[StoreVerification] = Op(
    "verify_store", "POST", "/repositories/{ref}/verify", "repositories.verify_store", StoreVerification,
    "repositories",
)  # fmt: skip

REPOSITORY_STATS: Op[RepositoryStats] = Op(
    "repository_stats", "GET", "/repositories/{ref}/stats", "maintenance.repository_stats",
    RepositoryStats, "repositories", admin=False,
)  # fmt: skip
FORGET: Op[ForgetReport] = Op(
    "forget_restore_points", "POST", "/repositories/{ref}/forget", "maintenance.forget_restore_points",
    ForgetReport, "repositories", audited=True,
)  # fmt: skip
PRUNE: Op[PruneReport] = Op(
    "prune_repository", "POST", "/repositories/{ref}/prune", "maintenance.prune_repository", PruneReport,
    "repositories", audited=True,
)  # fmt: skip
EXTEND_LOCKS: Op[MaintenanceDone] = Op(
    "extend_locks", "POST", "/repositories/{ref}/extend-locks", "maintenance.extend_locks", MaintenanceDone,
    "repositories", audited=True,
)  # fmt: skip
MIGRATE_REPOSITORY: Op[MaintenanceDone] = Op(
    "migrate_repository", "POST", "/repositories/{ref}/migrate", "maintenance.migrate_repository",
    MaintenanceDone, "repositories", audited=True,
)  # fmt: skip
CHANGE_PASSWORD: Op[MaintenanceDone] = Op(
    "change_password", "POST", "/repositories/{ref}/change-password", "maintenance.change_password",
    MaintenanceDone, "repositories", audited=True,
)  # fmt: skip

# protection groups and machines
LIST_GROUPS: Op[Page[ProtectionGroupView]] = Op(
    "list_groups", "GET", "/protection-groups", "protection_groups.list_groups", Page[ProtectionGroupView],
    "protection groups", admin=False,
)  # fmt: skip
CREATE_GROUP: Op[ProtectionGroupView] = Op(
    "create_group", "POST", "/protection-groups", "protection_groups.create_group", ProtectionGroupView,
    "protection groups", audited=True, status=201,
)  # fmt: skip
GET_GROUP: Op[ProtectionGroupView] = Op(
    "get_group", "GET", "/protection-groups/{ref}", "protection_groups.get_group", ProtectionGroupView,
    "protection groups", admin=False,
)  # fmt: skip
UPDATE_GROUP: Op[ProtectionGroupView] = Op(
    "update_group", "PATCH", "/protection-groups/{ref}", "protection_groups.update_group",
    ProtectionGroupView, "protection groups", audited=True,
)  # fmt: skip
DELETE_GROUP: Op[None] = Op(
    "delete_group", "DELETE", "/protection-groups/{ref}", "protection_groups.delete_group", NoContent,
    "protection groups", audited=True, status=204,
)  # fmt: skip
RESCAN_GROUP: Op[SessionStarted] = Op(
    "rescan_group", "POST", "/protection-groups/{ref}/rescan", "endpoints.rescan_group", SessionStarted,
    "protection groups", audited=True, status=202,
)  # fmt: skip
LIST_MACHINES: Op[Page[MachineView]] = Op(
    "list_machines", "GET", "/machines", "machines.list_machines", Page[MachineView], "machines",
    admin=False,
)  # fmt: skip
GET_MACHINE: Op[MachineDetail] = Op(
    "get_machine", "GET", "/machines/{ref}", "machines.get_machine", MachineDetail, "machines", admin=False,
)  # fmt: skip
UPGRADE_MACHINES: Op[UpgradeStarted] = Op(
    "upgrade_machines", "POST", "/machines/upgrade", "operations.upgrade_machines", UpgradeStarted,
    "machines", audited=True, status=202,
)  # fmt: skip

# jobs
LIST_JOBS: Op[Page[JobView]] = Op(
    "list_jobs", "GET", "/jobs", "jobs.list_jobs", Page[JobView], "jobs", admin=False
)
CREATE_JOB: Op[JobView] = Op(
    "create_job", "POST", "/jobs", "jobs.create_job", JobView, "jobs", audited=True, status=201
)
GET_JOB: Op[JobView] = Op("get_job", "GET", "/jobs/{ref}", "jobs.get_job", JobView, "jobs", admin=False)
UPDATE_JOB: Op[JobView] = Op(
    "update_job", "PATCH", "/jobs/{ref}", "jobs.update_job", JobView, "jobs", audited=True
)
DELETE_JOB: Op[None] = Op(
    "delete_job", "DELETE", "/jobs/{ref}", "jobs.delete_job", NoContent, "jobs", audited=True, status=204
)
ENABLE_JOB: Op[JobView] = Op(
    "enable_job", "POST", "/jobs/{ref}/enable", "endpoints.enable_job", JobView, "jobs", audited=True
)
DISABLE_JOB: Op[JobView] = Op(
    "disable_job", "POST", "/jobs/{ref}/disable", "endpoints.disable_job", JobView, "jobs", audited=True
)
START_JOB: Op[SessionStarted] = Op(
    "start_job", "POST", "/jobs/{ref}/start", "endpoints.start_job", SessionStarted, "jobs",
    audited=True, status=202,
)  # fmt: skip
STOP_JOB: Op[StoppedSessions] = Op(
    "stop_job", "POST", "/jobs/{ref}/stop", "endpoints.stop_job", StoppedSessions, "jobs",
    audited=True, status=202,
)  # fmt: skip

# sessions (the progress stream is a route of its own: api/routes.py)
LIST_SESSIONS: Op[Page[SessionView]] = Op(
    "list_sessions", "GET", "/sessions", "sessions.list_sessions", Page[SessionView], "sessions",
    admin=False,
)  # fmt: skip
GET_SESSION: Op[SessionDetail] = Op(
    "get_session", "GET", "/sessions/{session_id}", "sessions.get_session", SessionDetail, "sessions",
    admin=False,
)  # fmt: skip
STOP_SESSION: Op[SessionStarted] = Op(
    "stop_session", "POST", "/sessions/{session_id}/stop", "endpoints.stop_session", SessionStarted,
    "sessions", audited=True, status=202,
)  # fmt: skip

# restore points and restores (the tar download is a route of its own: api/routes.py)
LIST_RESTORE_POINTS: Op[Page[RestorePointView]] = Op(
    "list_restore_points", "GET", "/restore-points", "restore_points.list_restore_points",
    Page[RestorePointView], "restore points", admin=False,
)  # fmt: skip
SEARCH_FILES: Op[list[SearchHit]] = Op(
    "search_files", "GET", "/restore-points/search", "operations.search", list[SearchHit],
    "restore points", admin=False,
    constraints={"pattern": {"min_length": 1, "max_length": 500}, "limit": {"ge": 1, "le": 10000}},
)  # fmt: skip
BROWSE: Op[BrowseResult] = Op(
    "browse", "GET", "/restore-points/{ref}/browse", "endpoints.browse", BrowseResult, "restore points",
    admin=False, constraints={"path": {"max_length": 4096}},
)  # fmt: skip
GET_RESTORE_POINT: Op[RestorePointView] = Op(
    "get_restore_point", "GET", "/restore-points/{ref}", "restore_points.get_restore_point",
    RestorePointView, "restore points", admin=False,
)  # fmt: skip
DELETE_RESTORE_POINT: Op[MaintenanceDone] = Op(
    "delete_restore_point", "DELETE", "/restore-points/{ref}", "maintenance.delete_restore_point",
    MaintenanceDone, "restore points", audited=True,
)  # fmt: skip
RESTORE_FILES: Op[SessionStarted] = Op(
    "restore_files", "POST", "/restore-points/{ref}/restore-files", "endpoints.restore_files",
    SessionStarted, "restore", audited=True, status=202,
)  # fmt: skip
RESTORE_VOLUME: Op[SessionStarted] = Op(
    "restore_volume", "POST", "/restore-points/{ref}/restore-volume", "endpoints.restore_volume",
    SessionStarted, "restore", audited=True, status=202,
)  # fmt: skip

# server
INFO: Op[ServerInfo] = Op("info", "GET", "/info", "admin.server_info", ServerInfo, "server", admin=False)
ROTATE_KEY: Op[KeyRotation] = Op(
    "rotate_key", "POST", "/server/rotate-key", "admin.rotate_master_key", KeyRotation, "server",
    audited=True,
)  # fmt: skip
LIST_TOKENS: Op[Page[TokenView]] = Op(
    "list_tokens", "GET", "/tokens", "tokens.list_tokens", Page[TokenView], "server"
)
CREATE_TOKEN: Op[TokenCreated] = Op(
    "create_token", "POST", "/tokens", "tokens.create_token", TokenCreated, "server", audited=True,
    status=201, full_body=True,
)  # fmt: skip
REVOKE_TOKEN: Op[TokenView] = Op(
    "revoke_token", "DELETE", "/tokens/{ref}", "tokens.revoke_token", TokenView, "server", audited=True
)
LIST_AUDIT: Op[Page[AuditView]] = Op(
    "list_audit", "GET", "/audit", "admin.list_audit", Page[AuditView], "server", admin=False
)
DOCTOR: Op[list[CredentialTest]] = Op(
    "doctor", "POST", "/doctor", "credentials.doctor", list[CredentialTest], "server"
)

ALL: tuple[Op[Any], ...] = tuple(value for value in list(globals().values()) if isinstance(value, Op))
