"""``EmbeddedClient``: the ``Client`` interface over the service layer, without a running server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cloudkeep.config import Settings
from cloudkeep.server.client import Client
from cloudkeep.server.context import ServerContext, open_context
from cloudkeep.server.services import (
    admin,
    credentials,
    jobs,
    machines,
    operations,
    protection_groups,
    repositories,
    restore_points,
    sessions,
    tokens,
)
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


class EmbeddedClient(Client):
    """Runs every action in this process on ``ctx``; long operations run on daemon threads here,
    so a caller must watch a started session until it ends before exiting."""

    embedded = True

    def __init__(self, ctx: ServerContext, *, actor: str = "local", owns_context: bool = False) -> None:
        self.ctx = ctx
        self.actor = actor
        self._owns = owns_context

    @classmethod
    def open(cls, settings: Settings) -> EmbeddedClient:
        return cls(open_context(settings), owns_context=True)

    def close(self) -> None:
        if self._owns:
            self.ctx.close()

    # credentials
    def create_credential(self, data: CredentialCreate) -> CredentialView:
        return credentials.create_credential(self.ctx, data, actor=self.actor)

    def list_credentials(self, *, limit: int = 100, offset: int = 0) -> Page[CredentialView]:
        return credentials.list_credentials(self.ctx, limit=limit, offset=offset)

    def get_credential(self, ref: str) -> CredentialView:
        return credentials.get_credential(self.ctx, ref)

    def delete_credential(self, ref: str) -> None:
        credentials.delete_credential(self.ctx, ref, actor=self.actor)

    def test_credential(self, ref: str) -> CredentialTest:
        return credentials.test_credential(self.ctx, ref)

    def doctor(self, credential: str | None = None) -> list[CredentialTest]:
        return credentials.doctor(self.ctx, credential)

    # repositories
    def create_repository(self, data: RepositoryCreate) -> RepositoryView:
        return repositories.create_repository(self.ctx, data, actor=self.actor)

    def list_repositories(
        self, *, purpose: str | None = None, limit: int = 100, offset: int = 0
    ) -> Page[RepositoryView]:
        return repositories.list_repositories(self.ctx, purpose=purpose, limit=limit, offset=offset)

    def get_repository(self, ref: str) -> RepositoryView:
        return repositories.get_repository(self.ctx, ref)

    def delete_repository(self, ref: str) -> None:
        repositories.delete_repository(self.ctx, ref, actor=self.actor)

    def check_repository(self, ref: str, *, read_data_subset: float | None = None) -> RepositoryCheck:
        return repositories.check_repository(self.ctx, ref, read_data_subset=read_data_subset)

    def repair_repository(self, ref: str, request: RepositoryRepairRequest) -> RepositoryRepair:
        return repositories.repair_repository(self.ctx, ref, request, actor=self.actor)

    def verify_store(self, ref: str) -> StoreVerification:
        return repositories.verify_store(self.ctx, ref)

    # protection groups and machines
    def create_group(self, data: ProtectionGroupCreate) -> ProtectionGroupView:
        return protection_groups.create_group(self.ctx, data, actor=self.actor)

    def list_groups(self, *, limit: int = 100, offset: int = 0) -> Page[ProtectionGroupView]:
        return protection_groups.list_groups(self.ctx, limit=limit, offset=offset)

    def get_group(self, ref: str) -> ProtectionGroupView:
        return protection_groups.get_group(self.ctx, ref)

    def update_group(self, ref: str, data: ProtectionGroupUpdate) -> ProtectionGroupView:
        return protection_groups.update_group(self.ctx, ref, data, actor=self.actor)

    def delete_group(self, ref: str) -> None:
        protection_groups.delete_group(self.ctx, ref, actor=self.actor)

    def rescan(self, ref: str, *, machines: list[str] | None = None) -> str:
        return operations.start_rescan(self.ctx, ref, machines=machines, actor=self.actor)

    def list_machines(
        self, *, group: str | None = None, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> Page[MachineView]:
        return machines.list_machines(self.ctx, group=group, status=status, limit=limit, offset=offset)

    def get_machine(self, ref: str) -> MachineDetail:
        return machines.get_machine(self.ctx, ref)

    # jobs
    def create_job(self, data: JobCreate) -> JobView:
        return jobs.create_job(self.ctx, data, actor=self.actor)

    def list_jobs(self, *, limit: int = 100, offset: int = 0) -> Page[JobView]:
        return jobs.list_jobs(self.ctx, limit=limit, offset=offset)

    def get_job(self, ref: str) -> JobView:
        return jobs.get_job(self.ctx, ref)

    def update_job(self, ref: str, data: JobUpdate) -> JobView:
        return jobs.update_job(self.ctx, ref, data, actor=self.actor)

    def delete_job(self, ref: str) -> None:
        jobs.delete_job(self.ctx, ref, actor=self.actor)

    def set_job_enabled(self, ref: str, enabled: bool) -> JobView:
        return jobs.set_job_enabled(self.ctx, ref, enabled, actor=self.actor)

    def start_job(self, ref: str, *, machines: list[str] | None = None) -> str:
        return operations.start_job(self.ctx, ref, machines=machines, actor=self.actor)

    def stop_job(self, ref: str) -> list[str]:
        return operations.stop_job(self.ctx, ref, actor=self.actor)

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
        return sessions.list_sessions(self.ctx, kind=kind, state=state, job=job, limit=limit, offset=offset)

    def get_session(self, session_id: str) -> SessionDetail:
        return sessions.get_session(self.ctx, session_id)

    def watch_session(
        self, session_id: str, *, poll: float = 0.5, timeout: float = 86400
    ) -> Iterator[SessionDetail]:
        return sessions.watch_session(self.ctx, session_id, poll=poll, timeout=timeout)

    def stop_session(self, session_id: str) -> None:
        operations.stop_session(self.ctx, session_id, actor=self.actor)

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
        return restore_points.list_restore_points(
            self.ctx, machine=machine, job=job, include_removed=include_removed, limit=limit, offset=offset
        )

    def get_restore_point(self, ref: str) -> RestorePointView:
        return restore_points.get_restore_point(self.ctx, ref)

    def restore_files(self, ref: str, request: FileRestoreRequest) -> str:
        return operations.start_file_restore(self.ctx, ref, request, actor=self.actor)

    def restore_volume(self, ref: str, request: VolumeRestoreRequest) -> str:
        return operations.start_volume_restore(self.ctx, ref, request, actor=self.actor)

    def download(self, ref: str, paths: list[str], dest: Path) -> None:
        operations.download_files(self.ctx, ref, paths, dest, actor=self.actor)

    def browse(
        self, ref: str, path: str = "/", *, recursive: bool = False, pattern: str | None = None
    ) -> BrowseResult:
        return operations.browse(self.ctx, ref, path, recursive=recursive, pattern=pattern)

    def search(
        self, pattern: str, *, machine: str | None = None, job: str | None = None, limit: int = 1000
    ) -> list[SearchHit]:
        return operations.search(self.ctx, pattern, machine=machine, job=job, limit=limit)

    def export_image(self, ref: str, dest: Path, *, image_format: str = "raw") -> dict[str, Any]:
        return operations.export_image(self.ctx, ref, dest, image_format=image_format, actor=self.actor)

    # server
    def server_info(self) -> ServerInfo:
        return admin.server_info(self.ctx)

    def create_token(self, data: TokenCreate) -> TokenCreated:
        return tokens.create_token(self.ctx, data, actor=self.actor)

    def list_tokens(self, *, limit: int = 100, offset: int = 0) -> Page[TokenView]:
        return tokens.list_tokens(self.ctx, limit=limit, offset=offset)

    def revoke_token(self, ref: str) -> TokenView:
        return tokens.revoke_token(self.ctx, ref, actor=self.actor)

    def rotate_key(self) -> KeyRotation:
        return admin.rotate_master_key(self.ctx, actor=self.actor)

    def list_audit(
        self, *, actor: str | None = None, action: str | None = None, limit: int = 100, offset: int = 0
    ) -> Page[AuditView]:
        return admin.list_audit(self.ctx, actor=actor, action=action, limit=limit, offset=offset)
