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
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel, SecretStr

from cloudkeep import errors
from cloudkeep.config import API_PREFIX, Settings
from cloudkeep.server.services.schemas import (
    AuditView,
    BrowseResult,
    CredentialCreate,
    CredentialTest,
    CredentialView,
    FileRestoreRequest,
    JobCreate,
    JobUpdate,
    JobView,
    KeyRotation,
    MachineDetail,
    MachineView,
    Page,
    ProtectionGroupCreate,
    ProtectionGroupUpdate,
    ProtectionGroupView,
    RepositoryCheck,
    RepositoryCreate,
    RepositoryRepair,
    RepositoryRepairRequest,
    RepositoryView,
    RestorePointView,
    SearchHit,
    ServerInfo,
    SessionDetail,
    SessionView,
    StoreVerification,
    TokenCreate,
    TokenCreated,
    TokenView,
    VolumeRestoreRequest,
)

T = TypeVar("T", bound=BaseModel)
CHUNK = 1 << 20  # bytes per write while a download streams to disk


class Client(ABC):
    """Every administrator action; lists take ``limit``/``offset`` and return a ``Page``."""

    embedded: bool = False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the database or HTTP connection."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # credentials
    @abstractmethod
    def create_credential(self, data: CredentialCreate) -> CredentialView: ...
    @abstractmethod
    def list_credentials(self, *, limit: int = 100, offset: int = 0) -> Page[CredentialView]: ...
    @abstractmethod
    def get_credential(self, ref: str) -> CredentialView: ...
    @abstractmethod
    def delete_credential(self, ref: str) -> None: ...
    @abstractmethod
    def test_credential(self, ref: str) -> CredentialTest: ...
    @abstractmethod
    def doctor(self, credential: str | None = None) -> list[CredentialTest]: ...

    # repositories
    @abstractmethod
    def create_repository(self, data: RepositoryCreate) -> RepositoryView: ...
    @abstractmethod
    def list_repositories(
        self, *, purpose: str | None = None, limit: int = 100, offset: int = 0
    ) -> Page[RepositoryView]: ...
    @abstractmethod
    def get_repository(self, ref: str) -> RepositoryView: ...
    @abstractmethod
    def delete_repository(self, ref: str) -> None: ...
    @abstractmethod
    def check_repository(self, ref: str, *, read_data_subset: float | None = None) -> RepositoryCheck: ...
    @abstractmethod
    def repair_repository(self, ref: str, request: RepositoryRepairRequest) -> RepositoryRepair: ...
    @abstractmethod
    def verify_store(self, ref: str) -> StoreVerification: ...

    # protection groups and machines
    @abstractmethod
    def create_group(self, data: ProtectionGroupCreate) -> ProtectionGroupView: ...
    @abstractmethod
    def list_groups(self, *, limit: int = 100, offset: int = 0) -> Page[ProtectionGroupView]: ...
    @abstractmethod
    def get_group(self, ref: str) -> ProtectionGroupView: ...
    @abstractmethod
    def update_group(self, ref: str, data: ProtectionGroupUpdate) -> ProtectionGroupView: ...
    @abstractmethod
    def delete_group(self, ref: str) -> None: ...
    @abstractmethod
    def rescan(self, ref: str, *, machines: list[str] | None = None) -> str: ...
    @abstractmethod
    def list_machines(
        self, *, group: str | None = None, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> Page[MachineView]: ...
    @abstractmethod
    def get_machine(self, ref: str) -> MachineDetail: ...

    # jobs
    @abstractmethod
    def create_job(self, data: JobCreate) -> JobView: ...
    @abstractmethod
    def list_jobs(self, *, limit: int = 100, offset: int = 0) -> Page[JobView]: ...
    @abstractmethod
    def get_job(self, ref: str) -> JobView: ...
    @abstractmethod
    def update_job(self, ref: str, data: JobUpdate) -> JobView: ...
    @abstractmethod
    def delete_job(self, ref: str) -> None: ...
    @abstractmethod
    def set_job_enabled(self, ref: str, enabled: bool) -> JobView: ...
    @abstractmethod
    def start_job(self, ref: str, *, machines: list[str] | None = None) -> str: ...
    @abstractmethod
    def stop_job(self, ref: str) -> list[str]: ...

    # sessions
    @abstractmethod
    def list_sessions(
        self,
        *,
        kind: str | None = None,
        state: str | None = None,
        job: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[SessionView]: ...
    @abstractmethod
    def get_session(self, session_id: str) -> SessionDetail: ...
    @abstractmethod
    def watch_session(
        self, session_id: str, *, poll: float = 0.5, timeout: float = 86400
    ) -> Iterator[SessionDetail]: ...
    @abstractmethod
    def stop_session(self, session_id: str) -> None: ...

    # restore points and restores
    @abstractmethod
    def list_restore_points(
        self,
        *,
        machine: str | None = None,
        job: str | None = None,
        include_removed: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[RestorePointView]: ...
    @abstractmethod
    def get_restore_point(self, ref: str) -> RestorePointView: ...
    @abstractmethod
    def restore_files(self, ref: str, request: FileRestoreRequest) -> str: ...
    @abstractmethod
    def restore_volume(self, ref: str, request: VolumeRestoreRequest) -> str: ...
    @abstractmethod
    def download(self, ref: str, paths: list[str], dest: Path) -> None: ...
    @abstractmethod
    def browse(
        self, ref: str, path: str = "/", *, recursive: bool = False, pattern: str | None = None
    ) -> BrowseResult: ...
    @abstractmethod
    def search(
        self, pattern: str, *, machine: str | None = None, job: str | None = None, limit: int = 1000
    ) -> list[SearchHit]: ...
    @abstractmethod
    def export_image(self, ref: str, dest: Path, *, image_format: str = "raw") -> dict[str, Any]: ...

    # server
    @abstractmethod
    def server_info(self) -> ServerInfo: ...
    @abstractmethod
    def create_token(self, data: TokenCreate) -> TokenCreated: ...
    @abstractmethod
    def list_tokens(self, *, limit: int = 100, offset: int = 0) -> Page[TokenView]: ...
    @abstractmethod
    def revoke_token(self, ref: str) -> TokenView: ...
    @abstractmethod
    def rotate_key(self) -> KeyRotation: ...
    @abstractmethod
    def list_audit(
        self, *, actor: str | None = None, action: str | None = None, limit: int = 100, offset: int = 0
    ) -> Page[AuditView]: ...


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

    # Query parameters travel as a dict, never as **kwargs: a parameter named like an argument
    # of these helpers (``path``, ``model``, ``method``) must reach the server, not collide.
    def _get(self, url: str, model: type[T], params: dict[str, Any] | None = None) -> T:
        return model.model_validate(self._request("GET", url, params=_params(params)).json())

    def _send(
        self, method: str, url: str, model: type[T], body: Any = None, params: dict[str, Any] | None = None
    ) -> T:
        response = self._request(method, url, json=body, params=_params(params))
        return model.model_validate(response.json())

    def _session_id(self, path: str, body: Any = None) -> str:
        session_id: str = self._request("POST", path, json=body).json()["session_id"]
        return session_id

    # credentials
    def create_credential(self, data: CredentialCreate) -> CredentialView:
        return self._send("POST", "/credentials", CredentialView, wire(data))

    def list_credentials(self, *, limit: int = 100, offset: int = 0) -> Page[CredentialView]:
        return self._get("/credentials", Page[CredentialView], {"limit": limit, "offset": offset})

    def get_credential(self, ref: str) -> CredentialView:
        return self._get(f"/credentials/{ref}", CredentialView)

    def delete_credential(self, ref: str) -> None:
        self._request("DELETE", f"/credentials/{ref}")

    def test_credential(self, ref: str) -> CredentialTest:
        return self._send("POST", f"/credentials/{ref}/test", CredentialTest)

    def doctor(self, credential: str | None = None) -> list[CredentialTest]:
        response = self._request("POST", "/doctor", params=_params({"credential": credential}))
        return [CredentialTest.model_validate(item) for item in response.json()]

    # repositories
    def create_repository(self, data: RepositoryCreate) -> RepositoryView:
        return self._send("POST", "/repositories", RepositoryView, wire(data))

    def list_repositories(
        self, *, purpose: str | None = None, limit: int = 100, offset: int = 0
    ) -> Page[RepositoryView]:
        return self._get(
            "/repositories", Page[RepositoryView], {"purpose": purpose, "limit": limit, "offset": offset}
        )

    def get_repository(self, ref: str) -> RepositoryView:
        return self._get(f"/repositories/{ref}", RepositoryView)

    def delete_repository(self, ref: str) -> None:
        self._request("DELETE", f"/repositories/{ref}")

    def check_repository(self, ref: str, *, read_data_subset: float | None = None) -> RepositoryCheck:
        return self._send(
            "POST",
            f"/repositories/{ref}/check",
            RepositoryCheck,
            params={"read_data_subset": read_data_subset},
        )

    def repair_repository(self, ref: str, request: RepositoryRepairRequest) -> RepositoryRepair:
        return self._send("POST", f"/repositories/{ref}/repair", RepositoryRepair, wire(request))

    def verify_store(self, ref: str) -> StoreVerification:
        return self._send("POST", f"/repositories/{ref}/verify", StoreVerification)

    # protection groups and machines
    def create_group(self, data: ProtectionGroupCreate) -> ProtectionGroupView:
        return self._send("POST", "/protection-groups", ProtectionGroupView, wire(data))

    def list_groups(self, *, limit: int = 100, offset: int = 0) -> Page[ProtectionGroupView]:
        return self._get("/protection-groups", Page[ProtectionGroupView], {"limit": limit, "offset": offset})

    def get_group(self, ref: str) -> ProtectionGroupView:
        return self._get(f"/protection-groups/{ref}", ProtectionGroupView)

    def update_group(self, ref: str, data: ProtectionGroupUpdate) -> ProtectionGroupView:
        return self._send("PATCH", f"/protection-groups/{ref}", ProtectionGroupView, wire(data))

    def delete_group(self, ref: str) -> None:
        self._request("DELETE", f"/protection-groups/{ref}")

    def rescan(self, ref: str, *, machines: list[str] | None = None) -> str:
        return self._session_id(
            f"/protection-groups/{ref}/rescan", {"machines": machines} if machines else None
        )

    def list_machines(
        self, *, group: str | None = None, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> Page[MachineView]:
        return self._get(
            "/machines",
            Page[MachineView],
            {"group": group, "status": status, "limit": limit, "offset": offset},
        )

    def get_machine(self, ref: str) -> MachineDetail:
        return self._get(f"/machines/{ref}", MachineDetail)

    # jobs
    def create_job(self, data: JobCreate) -> JobView:
        return self._send("POST", "/jobs", JobView, wire(data))

    def list_jobs(self, *, limit: int = 100, offset: int = 0) -> Page[JobView]:
        return self._get("/jobs", Page[JobView], {"limit": limit, "offset": offset})

    def get_job(self, ref: str) -> JobView:
        return self._get(f"/jobs/{ref}", JobView)

    def update_job(self, ref: str, data: JobUpdate) -> JobView:
        return self._send("PATCH", f"/jobs/{ref}", JobView, wire(data))

    def delete_job(self, ref: str) -> None:
        self._request("DELETE", f"/jobs/{ref}")

    def set_job_enabled(self, ref: str, enabled: bool) -> JobView:
        return self._send("POST", f"/jobs/{ref}/{'enable' if enabled else 'disable'}", JobView)

    def start_job(self, ref: str, *, machines: list[str] | None = None) -> str:
        return self._session_id(f"/jobs/{ref}/start", {"machines": machines} if machines else None)

    def stop_job(self, ref: str) -> list[str]:
        ids: list[str] = self._request("POST", f"/jobs/{ref}/stop").json()["session_ids"]
        return ids

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
        return self._get(
            "/sessions",
            Page[SessionView],
            {"kind": kind, "state": state, "job": job, "limit": limit, "offset": offset},
        )

    def get_session(self, session_id: str) -> SessionDetail:
        return self._get(f"/sessions/{session_id}", SessionDetail)

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

    def stop_session(self, session_id: str) -> None:
        self._request("POST", f"/sessions/{session_id}/stop")

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
        return self._get(
            "/restore-points",
            Page[RestorePointView],
            {
                "machine": machine,
                "job": job,
                "include_removed": include_removed,
                "limit": limit,
                "offset": offset,
            },
        )

    def get_restore_point(self, ref: str) -> RestorePointView:
        return self._get(f"/restore-points/{ref}", RestorePointView)

    def restore_files(self, ref: str, request: FileRestoreRequest) -> str:
        return self._session_id(f"/restore-points/{ref}/restore-files", wire(request))

    def restore_volume(self, ref: str, request: VolumeRestoreRequest) -> str:
        return self._session_id(f"/restore-points/{ref}/restore-volume", wire(request))

    def download(self, ref: str, paths: list[str], dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        # The tar goes to an anonymous file on dest's file system, never whole into memory.
        with tempfile.TemporaryFile(dir=dest) as spool:
            self._receive(f"/restore-points/{ref}/download", {"paths": paths}, spool)
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

    def _receive(self, url: str, body: Any, sink: IO[bytes]) -> None:
        """POST ``body`` and write the response body to ``sink`` as it arrives."""
        try:
            with self.http.stream("POST", url, json=body, timeout=None) as response:
                if not response.is_success:
                    response.read()
                    raise self._error(response)
                for chunk in response.iter_bytes(CHUNK):
                    sink.write(chunk)
        except httpx.TransportError as exc:
            raise errors.UnreachableError(
                f"lost the connection to {self.base} while downloading: {exc}",
                hint="check --api-url / CLOUDKEEP_API_URL and that `cloudkeep server start` runs",
            ) from exc

    def browse(
        self, ref: str, path: str = "/", *, recursive: bool = False, pattern: str | None = None
    ) -> BrowseResult:
        params = {"path": path, "recursive": recursive, "pattern": pattern}
        return self._get(f"/restore-points/{ref}/browse", BrowseResult, params)

    def search(
        self, pattern: str, *, machine: str | None = None, job: str | None = None, limit: int = 1000
    ) -> list[SearchHit]:
        params = _params({"pattern": pattern, "machine": machine, "job": job, "limit": limit})
        response = self._request("GET", "/restore-points/search", params=params)
        return [SearchHit.model_validate(hit) for hit in response.json()]

    def export_image(self, ref: str, dest: Path, *, image_format: str = "raw") -> dict[str, Any]:
        raise errors.ConfigurationError(
            "exporting a disk image writes on the server host; run it there in embedded mode",
            hint="unset --api-url / CLOUDKEEP_API_URL on the server host",
        )

    # server
    def server_info(self) -> ServerInfo:
        return self._get("/info", ServerInfo)

    def create_token(self, data: TokenCreate) -> TokenCreated:
        return self._send("POST", "/tokens", TokenCreated, wire(data, only_set=False))

    def list_tokens(self, *, limit: int = 100, offset: int = 0) -> Page[TokenView]:
        return self._get("/tokens", Page[TokenView], {"limit": limit, "offset": offset})

    def revoke_token(self, ref: str) -> TokenView:
        return self._send("DELETE", f"/tokens/{ref}", TokenView)

    def rotate_key(self) -> KeyRotation:
        return self._send("POST", "/server/rotate-key", KeyRotation)

    def list_audit(
        self, *, actor: str | None = None, action: str | None = None, limit: int = 100, offset: int = 0
    ) -> Page[AuditView]:
        return self._get(
            "/audit", Page[AuditView], {"actor": actor, "action": action, "limit": limit, "offset": offset}
        )
