"""The operation table (``server/ops.py``): every op is a route with its historic operation id, and the
update operations it added check before they store (credential material) or refuse what would
orphan data (a repository's location, format options)."""

from __future__ import annotations

import typing

import pytest
from fastapi.testclient import TestClient
from tests.server.fixtures import Seeded

from cloudkeep.errors import ConfigurationError
from cloudkeep.server import ops
from cloudkeep.server.api.app import create_app
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import AuditEvent, Credential
from cloudkeep.server.services import credentials, repositories
from cloudkeep.server.services.schemas import CredentialUpdate, RepositoryUpdate


def test_every_op_is_a_route_with_its_historic_operation_id(ctx: ServerContext) -> None:
    spec = create_app(ctx).openapi()
    operations = {
        (method.upper(), path.removeprefix("/api/v1")): body
        for path, methods in spec["paths"].items()
        for method, body in methods.items()
    }
    for op in ops.ALL:
        body = operations[(op.method, op.path)]
        assert body["operationId"].startswith(f"{op.name}_api_v1_"), op.name
        assert body["tags"] == [op.tag]
    # ids generated clients already use stay as they were before the table
    assert operations[("POST", "/protection-groups/{ref}/rescan")]["operationId"] == (
        "rescan_group_api_v1_protection_groups__ref__rescan_post"
    )
    assert operations[("GET", "/credentials")]["operationId"] == "list_credentials_api_v1_credentials_get"
    assert {
        "/restore-points/{ref}/download",
        "/restore-points/{ref}/export",
        "/sessions/{session_id}/events",
    } <= {path for _method, path in operations}
    limit = next(p for p in operations[("GET", "/jobs")]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 500  # the page bounds reach the generated routes


def test_credential_update_checks_the_material_before_storing(ctx: ServerContext, seeded: Seeded) -> None:
    before = credentials.get_credential(ctx, seeded.credential)
    a_file = seeded.lab_dir.parent / "a-file"
    a_file.write_text("not a folder")
    blocked = a_file / "lab"  # under a file: the local provider cannot make its folder
    with pytest.raises(ConfigurationError, match="refused"):
        credentials.update_credential(
            ctx, seeded.credential, CredentialUpdate(options={"lab_dir": str(blocked)})
        )
    assert credentials.get_credential(ctx, seeded.credential) == before

    moved = seeded.lab_dir.parent / "lab2"
    updated = credentials.update_credential(
        ctx, seeded.credential, CredentialUpdate(options={"lab_dir": str(moved), "api_secret": "new-secret"})
    )
    assert updated.options == {"lab_dir": str(moved)}  # the secret-looking key went into the sealed part
    rotated = CredentialUpdate.model_validate({"secret": {"token": "t0k3n"}})
    credentials.update_credential(ctx, seeded.credential, rotated)
    with ctx.db() as db:
        sealed = db.query(Credential).filter(Credential.name == seeded.credential).one().secret
        assert ctx.secrets.open(sealed) == {"api_secret": "new-secret", "token": "t0k3n"}  # merged
        events = db.query(AuditEvent).filter(AuditEvent.action == "credential.update").all()
        assert len(events) == 2 and "new-secret" not in str([e.detail for e in events])


def test_repository_update_refuses_what_would_orphan_data(
    ctx: ServerContext, seeded: Seeded, admin_token: str
) -> None:
    with TestClient(create_app(ctx), headers={"Authorization": f"Bearer {admin_token}"}) as api:
        moved = api.patch(f"/api/v1/repositories/{seeded.backup}", json={"location": "elsewhere"})
        assert moved.status_code == 422 and "location" in moved.text
        tuned = api.patch(f"/api/v1/repositories/{seeded.backup}", json={"options": {"pack_size": 1}})
        assert tuned.status_code == 422 and "cannot change" in tuned.json()["error"]["message"]
        renamed = api.patch(f"/api/v1/repositories/{seeded.backup}", json={"name": "renamed"})
        assert renamed.status_code == 200 and renamed.json()["location"] == "backups"
    taken = RepositoryUpdate(name=seeded.distribution)
    with pytest.raises(Exception, match="already"):
        repositories.update_repository(ctx, "renamed", taken)


def test_each_op_states_its_result_once_and_truly() -> None:
    """mypy cannot see that an op's ``result`` is its ``Op[R]`` and its service's return type: this does."""
    declared = typing.get_type_hints(ops)
    for name, op in vars(ops).items():
        if not isinstance(op, ops.Op):
            continue
        assert typing.get_args(declared[name]) == (op.result,), name
        returns = typing.get_type_hints(ops.service_of(op))["return"]
        assert returns == op.result, f"{op.name}: the service returns {returns}, the op says {op.result}"
