"""Routes: credentials, repositories, protection groups, machines."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response

from cloudkeep.server.api.deps import Admin, Ctx, Limit, Offset, Reader
from cloudkeep.server.services import credentials, machines, operations, protection_groups, repositories
from cloudkeep.server.services.schemas import (
    CredentialCreate,
    CredentialTest,
    CredentialView,
    JobStart,
    MachineDetail,
    MachineView,
    Page,
    ProtectionGroupCreate,
    ProtectionGroupUpdate,
    ProtectionGroupView,
    Purpose,
    RepositoryCheck,
    RepositoryCreate,
    RepositoryRepair,
    RepositoryRepairRequest,
    RepositoryView,
    SessionStarted,
    StoreVerification,
)

router = APIRouter()


@router.get("/credentials", tags=["credentials"])
def list_credentials(ctx: Ctx, _: Reader, limit: Limit = 100, offset: Offset = 0) -> Page[CredentialView]:
    return credentials.list_credentials(ctx, limit=limit, offset=offset)


@router.post("/credentials", status_code=201, tags=["credentials"])
def create_credential(ctx: Ctx, who: Admin, data: CredentialCreate) -> CredentialView:
    return credentials.create_credential(ctx, data, actor=who.name)


@router.get("/credentials/{ref}", tags=["credentials"])
def get_credential(ctx: Ctx, _: Reader, ref: str) -> CredentialView:
    return credentials.get_credential(ctx, ref)


@router.delete("/credentials/{ref}", status_code=204, tags=["credentials"])
def delete_credential(ctx: Ctx, who: Admin, ref: str) -> Response:
    credentials.delete_credential(ctx, ref, actor=who.name)
    return Response(status_code=204)


@router.post("/credentials/{ref}/test", tags=["credentials"])
def test_credential(ctx: Ctx, _: Admin, ref: str) -> CredentialTest:
    return credentials.test_credential(ctx, ref)


@router.get("/repositories", tags=["repositories"])
def list_repositories(
    ctx: Ctx, _: Reader, purpose: Purpose | None = None, limit: Limit = 100, offset: Offset = 0
) -> Page[RepositoryView]:
    return repositories.list_repositories(ctx, purpose=purpose, limit=limit, offset=offset)


@router.post("/repositories", status_code=201, tags=["repositories"])
def create_repository(ctx: Ctx, who: Admin, data: RepositoryCreate) -> RepositoryView:
    return repositories.create_repository(ctx, data, actor=who.name)


@router.get("/repositories/{ref}", tags=["repositories"])
def get_repository(ctx: Ctx, _: Reader, ref: str) -> RepositoryView:
    return repositories.get_repository(ctx, ref)


@router.delete("/repositories/{ref}", status_code=204, tags=["repositories"])
def delete_repository(ctx: Ctx, who: Admin, ref: str) -> Response:
    repositories.delete_repository(ctx, ref, actor=who.name)
    return Response(status_code=204)


@router.post("/repositories/{ref}/check", tags=["repositories"])
def check_repository(
    ctx: Ctx, _: Admin, ref: str, read_data_subset: Annotated[float | None, Query(gt=0, le=1)] = None
) -> RepositoryCheck:
    return repositories.check_repository(ctx, ref, read_data_subset=read_data_subset)


@router.post("/repositories/{ref}/repair", tags=["repositories"])
def repair_repository(ctx: Ctx, who: Admin, ref: str, request: RepositoryRepairRequest) -> RepositoryRepair:
    return repositories.repair_repository(ctx, ref, request, actor=who.name)


@router.post("/repositories/{ref}/verify", tags=["repositories"])
def verify_store(ctx: Ctx, _: Admin, ref: str) -> StoreVerification:
    return repositories.verify_store(ctx, ref)


@router.get("/protection-groups", tags=["protection groups"])
def list_groups(ctx: Ctx, _: Reader, limit: Limit = 100, offset: Offset = 0) -> Page[ProtectionGroupView]:
    return protection_groups.list_groups(ctx, limit=limit, offset=offset)


@router.post("/protection-groups", status_code=201, tags=["protection groups"])
def create_group(ctx: Ctx, who: Admin, data: ProtectionGroupCreate) -> ProtectionGroupView:
    return protection_groups.create_group(ctx, data, actor=who.name)


@router.get("/protection-groups/{ref}", tags=["protection groups"])
def get_group(ctx: Ctx, _: Reader, ref: str) -> ProtectionGroupView:
    return protection_groups.get_group(ctx, ref)


@router.patch("/protection-groups/{ref}", tags=["protection groups"])
def update_group(ctx: Ctx, who: Admin, ref: str, data: ProtectionGroupUpdate) -> ProtectionGroupView:
    return protection_groups.update_group(ctx, ref, data, actor=who.name)


@router.delete("/protection-groups/{ref}", status_code=204, tags=["protection groups"])
def delete_group(ctx: Ctx, who: Admin, ref: str) -> Response:
    protection_groups.delete_group(ctx, ref, actor=who.name)
    return Response(status_code=204)


@router.post("/protection-groups/{ref}/rescan", status_code=202, tags=["protection groups"])
def rescan_group(
    ctx: Ctx, who: Admin, ref: str, data: Annotated[JobStart | None, Body()] = None
) -> SessionStarted:
    machine_refs = data.machines if data else None
    return SessionStarted(session_id=operations.start_rescan(ctx, ref, machines=machine_refs, actor=who.name))


@router.get("/machines", tags=["machines"])
def list_machines(
    ctx: Ctx,
    _: Reader,
    group: str | None = None,
    status: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[MachineView]:
    return machines.list_machines(ctx, group=group, status=status, limit=limit, offset=offset)


@router.get("/machines/{ref}", tags=["machines"])
def get_machine(ctx: Ctx, _: Reader, ref: str) -> MachineDetail:
    return machines.get_machine(ctx, ref)
