"""A write the server itself makes to a repository (init, maintenance) that storage refuses is
answered 503 ``repository_write``, and recorded as a failed maintenance session."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.server.fixtures import Seeded
from tests.support.tmpfs import Tmpfs

from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import JobSession

V1 = "/api/v1"


def test_refused_server_writes_answer_503(
    api: TestClient, ctx: ServerContext, seeded: Seeded, tmpfs: Tmpfs
) -> None:
    tmpfs.resize("16m")
    location = str(tmpfs.path / "repo")
    body = {"name": "tiny", "credential": seeded.credential, "location": location,
            "password": "correct-horse-battery"}  # fmt: skip
    created = api.post(f"{V1}/repositories", json=body)
    assert created.status_code == 201, created.text

    (tmpfs.path / "empty").mkdir()  # a folder that exists, on a disk that turns read-only
    tmpfs.read_only()
    refused = api.post(f"{V1}/repositories/tiny/prune")
    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert error["type"] == "repository_write"
    assert error["message"].startswith(f"repository write failed: file://{location}: ")
    with ctx.db() as session:
        failed = session.scalars(select(JobSession).where(JobSession.kind == "maintenance")).one()
    assert failed.state == "failed" and failed.reason.startswith("repository write failed")

    init = api.post(
        f"{V1}/repositories", json={**body, "name": "tiny2", "location": str(tmpfs.path / "empty")}
    )
    assert init.status_code == 503 and init.json()["error"]["type"] == "repository_write", init.text

    tmpfs.read_only(False)
    assert api.post(f"{V1}/repositories/tiny/prune").status_code == 200
