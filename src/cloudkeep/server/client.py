"""One client interface over the backup server, with an embedded and an HTTP implementation.

Each CLI command is written once against ``Client``. ``EmbeddedClient`` calls the service layer on a
``ServerContext`` opened in-process (SQLite under ``Settings.home`` by default); ``HttpClient``
calls the same operations through the REST API of a running server.
"""

from __future__ import annotations

import tarfile
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, SecretStr, TypeAdapter

from cloudkeep import errors
from cloudkeep.config import API_PREFIX, Settings
from cloudkeep.server import ops
from cloudkeep.server.services.maintenance_schemas import (
    ForgetReport,
    ForgetRequest,
    MaintenanceDone,
    PasswordChange,
    PruneReport,
    RepositoryCheck,
    RepositoryRepair,
    RepositoryRepairRequest,
    RepositoryStats,
    StoreVerification,
)
from cloudkeep.server.services.schemas import (
    AuditView,
    BrowseResult,
    CredentialCreate,
    CredentialTest,
    CredentialUpdate,
    CredentialView,
    FileRestoreRequest,
    JobCreate,
    JobStart,
    JobUpdate,
    JobView,
    KeyRotation,
    MachineDetail,
    MachineUpgrade,
    MachineView,
    Page,
    ProtectionGroupCreate,
    ProtectionGroupUpdate,
    ProtectionGroupView,
    RepositoryCreate,
    RepositoryUpdate,
    RepositoryView,
    RestorePointView,
    SearchHit,
    ServerInfo,
    SessionDetail,
    SessionView,
    TokenCreate,
    TokenCreated,
    TokenView,
    VolumeRestoreRequest,
)

R = TypeVar("R")
CHUNK = 1 << 20  # bytes per write while a download streams to disk


class Client(ABC):
    """Every administrator action; lists take ``limit``/``offset`` and return a ``Page``.

    Each method is one ``Op`` of ``server/ops.py`` given its Python signature; an implementation
    provides ``call`` (and the three operations that move files or stream)."""

    embedded: bool = False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the database or HTTP connection."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @abstractmethod
    def call(self, op: ops.Op[R], /, **args: Any) -> R:
        """Run ``op`` with the service's arguments (by their API names) and return its result."""

    @abstractmethod
    def watch_session(
        self, session_id: str, *, poll: float = 0.5, timeout: float = 86400
    ) -> Iterator[SessionDetail]: ...
    @abstractmethod
    def download(self, ref: str, paths: list[str], dest: Path) -> None: ...
    @abstractmethod
    def export_image(self, ref: str, dest: Path, *, image_format: str = "raw") -> dict[str, Any]: ...

    # credentials
    def create_credential(self, data: CredentialCreate) -> CredentialView:
        return self.call(ops.CREATE_CREDENTIAL, data=data)

    def list_credentials(self, *, limit: int = 100, offset: int = 0) -> Page[CredentialView]:
        return self.call(ops.LIST_CREDENTIALS, limit=limit, offset=offset)

    def get_credential(self, ref: str) -> CredentialView:
        return self.call(ops.GET_CREDENTIAL, ref=ref)

    def update_credential(self, ref: str, data: CredentialUpdate) -> CredentialView:
        return self.call(ops.UPDATE_CREDENTIAL, ref=ref, data=data)

    def delete_credential(self, ref: str) -> None:
        self.call(ops.DELETE_CREDENTIAL, ref=ref)

    def test_credential(self, ref: str) -> CredentialTest:
        return self.call(ops.TEST_CREDENTIAL, ref=ref)

    def doctor(self, credential: str | None = None) -> list[CredentialTest]:
        return self.call(ops.DOCTOR, credential=credential)

    # repositories
    def create_repository(self, data: RepositoryCreate) -> RepositoryView:
        return self.call(ops.CREATE_REPOSITORY, data=data)

    def list_repositories(
        self, *, purpose: str | None = None, limit: int = 100, offset: int = 0
    ) -> Page[RepositoryView]:
        return self.call(ops.LIST_REPOSITORIES, purpose=purpose, limit=limit, offset=offset)

    def get_repository(self, ref: str) -> RepositoryView:
        return self.call(ops.GET_REPOSITORY, ref=ref)

    def update_repository(self, ref: str, data: RepositoryUpdate) -> RepositoryView:
        return self.call(ops.UPDATE_REPOSITORY, ref=ref, data=data)

    def delete_repository(self, ref: str) -> None:
        self.call(ops.DELETE_REPOSITORY, ref=ref)

    def check_repository(self, ref: str, *, read_data_subset: float | None = None) -> RepositoryCheck:
        return self.call(ops.CHECK_REPOSITORY, ref=ref, read_data_subset=read_data_subset)

    def repair_repository(self, ref: str, request: RepositoryRepairRequest) -> RepositoryRepair:
        return self.call(ops.REPAIR_REPOSITORY, ref=ref, request=request)

    def verify_store(self, ref: str) -> StoreVerification:
        return self.call(ops.VERIFY_STORE, ref=ref)

    def repository_stats(self, ref: str) -> RepositoryStats:
        return self.call(ops.REPOSITORY_STATS, ref=ref)

    def forget(self, ref: str, request: ForgetRequest) -> ForgetReport:
        return self.call(ops.FORGET, ref=ref, data=request)

    def prune(self, ref: str) -> PruneReport:
        return self.call(ops.PRUNE, ref=ref)

    def extend_locks(self, ref: str) -> MaintenanceDone:
        return self.call(ops.EXTEND_LOCKS, ref=ref)

    def migrate_repository(self, ref: str) -> MaintenanceDone:
        return self.call(ops.MIGRATE_REPOSITORY, ref=ref)

    def change_password(self, ref: str, request: PasswordChange) -> MaintenanceDone:
        return self.call(ops.CHANGE_PASSWORD, ref=ref, data=request)

    # protection groups and machines
    def create_group(self, data: ProtectionGroupCreate) -> ProtectionGroupView:
        return self.call(ops.CREATE_GROUP, data=data)

    def list_groups(self, *, limit: int = 100, offset: int = 0) -> Page[ProtectionGroupView]:
        return self.call(ops.LIST_GROUPS, limit=limit, offset=offset)

    def get_group(self, ref: str) -> ProtectionGroupView:
        return self.call(ops.GET_GROUP, ref=ref)

    def update_group(self, ref: str, data: ProtectionGroupUpdate) -> ProtectionGroupView:
        return self.call(ops.UPDATE_GROUP, ref=ref, data=data)

    def delete_group(self, ref: str) -> None:
        self.call(ops.DELETE_GROUP, ref=ref)

    def rescan(self, ref: str, *, machines: list[str] | None = None) -> str:
        data = JobStart(machines=machines) if machines else None
        return self.call(ops.RESCAN_GROUP, ref=ref, data=data).session_id

    def list_machines(
        self, *, group: str | None = None, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> Page[MachineView]:
        return self.call(ops.LIST_MACHINES, group=group, status=status, limit=limit, offset=offset)

    def get_machine(self, ref: str) -> MachineDetail:
        return self.call(ops.GET_MACHINE, ref=ref)

    def upgrade_machines(self, machines: list[str] | None = None, *, group: str | None = None) -> list[str]:
        data = MachineUpgrade(machines=machines or None, group=group)
        return self.call(ops.UPGRADE_MACHINES, data=data).session_ids

    # jobs
    def create_job(self, data: JobCreate) -> JobView:
        return self.call(ops.CREATE_JOB, data=data)

    def list_jobs(self, *, limit: int = 100, offset: int = 0) -> Page[JobView]:
        return self.call(ops.LIST_JOBS, limit=limit, offset=offset)

    def get_job(self, ref: str) -> JobView:
        return self.call(ops.GET_JOB, ref=ref)

    def update_job(self, ref: str, data: JobUpdate) -> JobView:
        return self.call(ops.UPDATE_JOB, ref=ref, data=data)

    def delete_job(self, ref: str) -> None:
        self.call(ops.DELETE_JOB, ref=ref)

    def set_job_enabled(self, ref: str, enabled: bool) -> JobView:
        return self.call(ops.ENABLE_JOB if enabled else ops.DISABLE_JOB, ref=ref)

    def start_job(self, ref: str, *, machines: list[str] | None = None) -> str:
        data = JobStart(machines=machines) if machines else None
        return self.call(ops.START_JOB, ref=ref, data=data).session_id

    def stop_job(self, ref: str) -> list[str]:
        return self.call(ops.STOP_JOB, ref=ref).session_ids

    # sessions
    def list_sessions(
        self,
        *,
        kind: str | None = None,
        state: str | None = None,
        job: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[SessionView]:
        return self.call(ops.LIST_SESSIONS, kind=kind, state=state, job=job, limit=limit, offset=offset)

    def get_session(self, session_id: str, *, limit: int = 100, offset: int = 0) -> SessionDetail:
        """The session with one page of its tasks (``task_total`` says how many there are)."""
        return self.call(ops.GET_SESSION, session_id=session_id, limit=limit, offset=offset)

    def get_session_all(self, session_id: str, *, page: int = 500) -> SessionDetail:
        """The session with every task, fetched page by page."""
        first = self.get_session(session_id, limit=page)
        tasks, log = list(first.tasks), list(first.log)
        while len(tasks) < first.task_total:
            more = self.get_session(session_id, limit=page, offset=len(tasks))
            if not more.tasks:  # fewer than counted (a concurrent change): stop rather than loop
                break
            tasks += more.tasks
            log += more.log
        return first.model_copy(update={"tasks": tasks, "log": log, "task_limit": len(tasks)})

    def stop_session(self, session_id: str) -> None:
        self.call(ops.STOP_SESSION, session_id=session_id)

    # restore points and restores
    def list_restore_points(
        self,
        *,
        machine: str | None = None,
        job: str | None = None,
        include_removed: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[RestorePointView]:
        return self.call(
            ops.LIST_RESTORE_POINTS,
            machine=machine,
            job=job,
            include_removed=include_removed,
            limit=limit,
            offset=offset,
        )

    def get_restore_point(self, ref: str) -> RestorePointView:
        return self.call(ops.GET_RESTORE_POINT, ref=ref)

    def delete_restore_point(self, ref: str) -> MaintenanceDone:
        return self.call(ops.DELETE_RESTORE_POINT, ref=ref)

    def restore_files(self, ref: str, request: FileRestoreRequest) -> str:
        return self.call(ops.RESTORE_FILES, ref=ref, data=request).session_id

    def restore_volume(self, ref: str, request: VolumeRestoreRequest) -> str:
        return self.call(ops.RESTORE_VOLUME, ref=ref, data=request).session_id

    def browse(
        self, ref: str, path: str = "/", *, recursive: bool = False, pattern: str | None = None
    ) -> BrowseResult:
        return self.call(ops.BROWSE, ref=ref, path=path, recursive=recursive, pattern=pattern)

    def search(
        self, pattern: str, *, machine: str | None = None, job: str | None = None, limit: int = 1000
    ) -> list[SearchHit]:
        return self.call(ops.SEARCH_FILES, pattern=pattern, machine=machine, job=job, limit=limit)

    # server
    def server_info(self) -> ServerInfo:
        return self.call(ops.INFO)

    def create_token(self, data: TokenCreate) -> TokenCreated:
        return self.call(ops.CREATE_TOKEN, data=data)

    def list_tokens(self, *, limit: int = 100, offset: int = 0) -> Page[TokenView]:
        return self.call(ops.LIST_TOKENS, limit=limit, offset=offset)

    def revoke_token(self, ref: str) -> TokenView:
        return self.call(ops.REVOKE_TOKEN, ref=ref)

    def rotate_key(self) -> KeyRotation:
        return self.call(ops.ROTATE_KEY)

    def list_audit(
        self, *, actor: str | None = None, action: str | None = None, limit: int = 100, offset: int = 0
    ) -> Page[AuditView]:
        return self.call(ops.LIST_AUDIT, actor=actor, action=action, limit=limit, offset=offset)


def open_client(settings: Settings) -> Client:
    """Remote when ``settings.api_url`` is set, else embedded on ``settings.home``."""
    if settings.api_url:
        return HttpClient(settings.api_url, settings.api_token)
    from cloudkeep.server.embedded import EmbeddedClient

    return EmbeddedClient.open(settings)


# --- HTTP --------------------------------------------------------------------------------------

_ERRORS: dict[str, type[errors.CloudkeepError]] = {
    "not_found": errors.NotFoundError,
    "conflict": errors.ConflictError,
    "invalid": errors.ConfigurationError,
    "validation": errors.ConfigurationError,
    "permission_denied": errors.PermissionDeniedError,
    "unauthenticated": errors.AuthenticationError,
    "unreachable": errors.UnreachableError,
    "insufficient_space": errors.InsufficientSpaceError,
    "repository_write": errors.RepositoryWriteError,
    "restore_incomplete": errors.RestoreIncompleteError,
    "integrity": errors.IntegrityError,
}


def wire(model: BaseModel | None, *, only_set: bool = True) -> Any:
    """The JSON body for ``model``, revealing write-only secrets (pydantic masks them by default)."""

    def reveal(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, dict):
            return {k: reveal(v) for k, v in value.items()}
        if isinstance(value, list):
            return [reveal(v) for v in value]
        return value

    return None if model is None else reveal(model.model_dump(exclude_unset=only_set))


@cache
def _adapter(result: Any) -> TypeAdapter[Any]:
    return TypeAdapter(result)


def _params(values: dict[str, Any] | None) -> dict[str, Any]:
    """The query parameters that are set (``None`` means "not given", so it is not sent)."""
    return {k: v for k, v in (values or {}).items() if v is not None}


class HttpClient(Client):
    """Talks to ``<api_url>/api/v1`` with a bearer token; API errors become ``CloudkeepError``s."""

    def __init__(self, api_url: str, token: str | None, *, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base = api_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base + API_PREFIX, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise errors.UnreachableError(
                f"cannot reach the cloudkeep server at {self.base}: {exc}",
                hint="check --api-url / CLOUDKEEP_API_URL and that `cloudkeep server start` runs",
            ) from exc
        if response.is_success:
            return response
        raise self._error(response)

    @staticmethod
    def _error(response: httpx.Response) -> errors.CloudkeepError:
        try:
            body = response.json()["error"]
            kind, message, hint = body.get("type", ""), body.get("message", ""), body.get("hint")
        except (ValueError, KeyError, TypeError, AttributeError):
            kind, message, hint = "", f"HTTP {response.status_code}: {response.text[:200]}", None
        return _ERRORS.get(kind, errors.CloudkeepError)(message, hint=hint)

    def call(self, op: ops.Op[R], /, **args: Any) -> R:
        """Path parameters by name, a model as the JSON body, every other set argument as the query."""
        path = op.path.format(**{name: quote(str(args.pop(name)), safe="") for name in op.path_params})
        body = None
        for name, value in list(args.items()):
            if isinstance(value, BaseModel):
                body = wire(args.pop(name), only_set=not op.full_body)
        response = self._request(op.method, path, json=body, params=_params(args))
        if op.result is ops.NoContent:
            return None  # type: ignore[return-value]
        return _adapter(op.result).validate_python(response.json())

    def watch_session(
        self, session_id: str, *, poll: float = 0.5, timeout: float = 86400
    ) -> Iterator[SessionDetail]:
        params = {"poll": poll, "timeout": timeout}
        try:
            with self.http.stream(
                "GET", f"/sessions/{session_id}/events", params=params, timeout=None
            ) as response:
                if not response.is_success:
                    response.read()
                    raise self._error(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield SessionDetail.model_validate_json(line)
        except httpx.TransportError as exc:
            raise errors.UnreachableError(
                f"lost the connection to {self.base} while watching: {exc}"
            ) from exc

    def download(self, ref: str, paths: list[str], dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        # The tar goes to an anonymous file on dest's file system, never whole into memory.
        with tempfile.TemporaryFile(dir=dest) as spool:
            self._receive(f"/restore-points/{quote(ref, safe='')}/download", {"paths": paths}, spool)
            spool.seek(0)
            refused: list[str] = []

            def inside_dest(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
                try:  # the "data" filter: nothing outside dest, no device nodes, no absolute links
                    return tarfile.data_filter(member, path)
                except tarfile.FilterError as exc:
                    refused.append(f"{member.name}: {exc}")
                    return None

            with tarfile.open(fileobj=spool, mode="r") as tar:
                tar.extractall(dest, filter=inside_dest)
        if refused:
            raise errors.incomplete_restore(f"download of restore point {ref} into {dest}", refused)

    def _receive(self, url: str, body: Any, sink: IO[bytes]) -> httpx.Headers:
        """POST ``body`` and write the response body to ``sink`` as it arrives; returns the headers."""
        try:
            with self.http.stream("POST", url, json=body, timeout=None) as response:
                if not response.is_success:
                    response.read()
                    raise self._error(response)
                for chunk in response.iter_bytes(CHUNK):
                    sink.write(chunk)
                return response.headers
        except httpx.TransportError as exc:
            raise errors.UnreachableError(
                f"lost the connection to {self.base} while downloading: {exc}",
                hint="check --api-url / CLOUDKEEP_API_URL and that `cloudkeep server start` runs",
            ) from exc

    def export_image(self, ref: str, dest: Path, *, image_format: str = "raw") -> dict[str, Any]:
        """The server writes the image and streams it here; it lands under ``dest`` only when whole."""
        if dest.exists():
            raise errors.ConfigurationError(
                f"{dest} already exists", hint="choose a new file name; nothing was overwritten"
            )
        partial = dest.with_name(dest.name + ".partial")
        body = wire(ops.ExportRequest(image_format=image_format), only_set=False)
        try:
            with partial.open("xb") as sink:
                headers = self._receive(f"/restore-points/{quote(ref, safe='')}/export", body, sink)
            partial.rename(dest)
        finally:
            partial.unlink(missing_ok=True)
        result: dict[str, Any] = {"path": str(dest), "format": image_format}
        for key, header in ops.EXPORT_HEADERS.items():
            result[key] = int(headers.get(header, "0"))
        return result
