"""The REST API through FastAPI's TestClient, and one flow through a real uvicorn server."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from tests.server.fixtures import LiveServer, Seeded, add_machine

from cloudkeep.errors import AuthenticationError, NotFoundError, PermissionDeniedError
from cloudkeep.server.api import create_app
from cloudkeep.server.client import HttpClient
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import AuditEvent, JobSession, SessionTask
from cloudkeep.server.services.schemas import CredentialCreate, JobCreate, ProtectionGroupUpdate

V1 = "/api/v1"
SECRET = "super-secret-material-42"


def audit_rows(ctx: ServerContext) -> int:
    with ctx.db() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent)) or 0


def test_crud_flow_and_structured_errors(api: TestClient, ctx: ServerContext, seeded: Seeded) -> None:
    body = {
        "name": "aws1",
        "provider": "aws",
        "secret": {"aws_secret_access_key": SECRET},
        "options": {"region": "x"},
    }
    created = api.post(f"{V1}/credentials", json=body)
    assert created.status_code == 201 and SECRET not in created.text
    duplicate = api.post(f"{V1}/credentials", json=body)
    assert duplicate.status_code == 409
    assert (
        duplicate.json()["error"]["type"] == "conflict"
        and "already exists" in duplicate.json()["error"]["message"]
    )
    assert SECRET not in duplicate.text
    invalid = api.post(f"{V1}/credentials", json={"name": "x y", "provider": "gcp", "secret": {"k": SECRET}})
    assert invalid.status_code == 422 and invalid.json()["error"]["type"] == "validation"
    assert SECRET not in invalid.text  # validation errors never echo the input
    missing = api.get(f"{V1}/jobs/nope")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "type": "not_found",
            "message": "job 'nope' does not exist",
            "hint": "list them with `cloudkeep job list`",
        }
    }
    listed = api.get(f"{V1}/credentials", params={"limit": 1})
    assert listed.status_code == 200 and listed.json()["total"] == 2 and len(listed.json()["items"]) == 1
    assert api.get(f"{V1}/credentials", params={"limit": 0}).status_code == 422
    machine_id = add_machine(ctx, seeded.group, "web-1")
    job = api.post(
        f"{V1}/jobs",
        json={
            "name": "nightly",
            "repository": seeded.backup,
            "machines": [machine_id],
            "retention": {"keep_last": 3},
        },
    )
    assert job.status_code == 201, job.text
    assert api.post(f"{V1}/jobs/nightly/disable").json()["enabled"] is False
    bad_schedule = api.patch(f"{V1}/jobs/nightly", json={"schedule": {"kind": "daily", "time": "7pm"}})
    assert bad_schedule.status_code == 422 and "time" in bad_schedule.json()["error"]["message"]
    assert api.get(f"{V1}/jobs/nightly").json()["schedule"] is None  # nothing changed
    assert api.get(f"{V1}/machines/web-1").json()["steps"] == []
    assert api.delete(f"{V1}/jobs/nightly").status_code == 204
    assert api.get(f"{V1}/jobs/nightly").status_code == 404
    audit = api.get(f"{V1}/audit", params={"actor": "admin-token"}).json()
    assert [e["action"] for e in audit["items"]] == [
        "job.delete",
        "job.update",
        "job.create",
        "credential.create",
    ]
    assert SECRET not in json.dumps(audit)


def test_authentication_and_scopes(
    ctx: ServerContext, seeded: Seeded, admin_token: str, reader_token: str
) -> None:
    app = create_app(ctx)
    anonymous = TestClient(app)
    reader = TestClient(app, headers={"Authorization": f"Bearer {reader_token}"})
    forged = TestClient(app, headers={"Authorization": "Bearer ck_not-a-real-token"})
    assert anonymous.get(f"{V1}/credentials").status_code == 401
    assert anonymous.get(f"{V1}/credentials").headers["www-authenticate"] == "Bearer"
    assert forged.get(f"{V1}/credentials").status_code == 401
    assert reader.get(f"{V1}/credentials").status_code == 200
    before = audit_rows(ctx)
    writes = [
        ("POST", f"{V1}/credentials", {"name": "new", "provider": "local"}),
        ("DELETE", f"{V1}/credentials/{seeded.credential}", None),
        ("PATCH", f"{V1}/protection-groups/{seeded.group}", {"description": "changed"}),
        (
            "POST",
            f"{V1}/jobs",
            {"name": "j", "repository": seeded.backup, "protection_groups": [seeded.group]},
        ),
        ("POST", f"{V1}/tokens", {"name": "escalate", "scope": "admin"}),
        ("POST", f"{V1}/server/rotate-key", None),
    ]
    for method, path, body in writes:
        for client, status in ((anonymous, 401), (reader, 403), (forged, 401)):
            response = client.request(method, path, json=body)
            assert response.status_code == status, (method, path, response.text)
            assert response.json()["error"]["type"] in ("unauthenticated", "permission_denied")
    assert audit_rows(ctx) == before
    assert reader.get(f"{V1}/protection-groups/{seeded.group}").json()["description"] == ""
    assert reader.get(f"{V1}/credentials").json()["total"] == 1
    admin = TestClient(app, headers={"Authorization": f"Bearer {admin_token}"})
    assert admin.delete(f"{V1}/tokens/reader-token").json()["revoked_at"] is not None
    revoked = reader.get(f"{V1}/credentials")
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]


def test_long_operations_validate_before_starting(api: TestClient) -> None:
    """The engines are other engineers' work: here only the 404/validation paths are checked."""
    assert api.post(f"{V1}/protection-groups/nope/rescan").status_code == 404
    assert api.post(f"{V1}/jobs/nope/start", json={"machines": ["m"]}).status_code == 404
    assert api.post(f"{V1}/jobs/nope/stop").status_code == 404
    assert api.post(f"{V1}/sessions/nope/stop").status_code == 404
    assert api.get(f"{V1}/sessions/nope/events").status_code == 404
    assert api.post(f"{V1}/restore-points/nope/restore-files", json={}).status_code == 404
    assert api.post(f"{V1}/restore-points/nope/restore-volume", json={"target_path": "/x"}).status_code == 404
    assert api.post(f"{V1}/restore-points/nope/restore-volume", json={}).status_code == 422
    assert api.get(f"{V1}/restore-points/nope/browse").status_code == 404
    assert api.post(f"{V1}/restore-points/nope/download", json={"paths": ["/etc"]}).status_code == 404
    assert (
        api.get(f"{V1}/restore-points/search", params={"pattern": "*.conf", "machine": "nope"}).status_code
        == 404
    )
    assert api.get(f"{V1}/restore-points/search", params={"pattern": "*.conf"}).json() == []


def _session_with_task(ctx: ServerContext, machine_id: str) -> tuple[str, str]:
    with ctx.db() as db:
        session = JobSession(kind="backup", state="running", started_at=datetime.now(UTC))
        db.add(session)
        db.flush()
        task = SessionTask(session_id=session.id, machine_id=machine_id, state="running", progress=0.25)
        db.add(task)
        db.flush()
        return session.id, task.id


def _finish(ctx: ServerContext, session_id: str, task_id: str) -> None:
    with ctx.db() as db:
        task = db.get(SessionTask, task_id)
        session = db.get(JobSession, session_id)
        assert task is not None and session is not None
        task.progress, task.state = 1.0, "success"
        session.state, session.ended_at = "success", datetime.now(UTC)


def test_session_events_stream_until_the_end(api: TestClient, ctx: ServerContext, seeded: Seeded) -> None:
    """Sessions are written directly here (the job runner is tested elsewhere); the stream must end."""
    session_id, task_id = _session_with_task(ctx, add_machine(ctx, seeded.group, "web-1"))
    shown = api.get(f"{V1}/sessions/{session_id}").json()
    assert shown["state"] == "running" and shown["tasks"][0]["progress"] == 0.25
    # TestClient buffers a streamed body, so the session is finished from a timer; under load the
    # stream may start after it fired, so the first event may already be the last one.
    timer = threading.Timer(1.0, _finish, args=(ctx, session_id, task_id))
    timer.start()
    with api.stream(
        "GET", f"{V1}/sessions/{session_id}/events", params={"poll": 0.05, "timeout": 30}
    ) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in response.iter_lines() if line]
    timer.join()
    states = [event["state"] for event in events]
    assert states[-1] == "success" and set(states) <= {"running", "success"}
    assert states == sorted(states, key=["running", "success"].index)  # never back to running
    assert events[-1]["tasks"][0]["progress"] == 1.0
    assert api.get(f"{V1}/sessions", params={"state": "success"}).json()["total"] == 1


@pytest.mark.slow
def test_http_client_against_real_uvicorn(
    live_server: LiveServer, ctx: ServerContext, seeded: Seeded, admin_token: str, reader_token: str
) -> None:
    """The same client methods the CLI uses, over real HTTP on a loopback port."""
    with HttpClient(live_server.url, admin_token) as admin:
        cred = admin.create_credential(CredentialCreate(name="aws1", provider="aws", secret={"k": SECRET}))  # type: ignore[dict-item]
        assert admin.get_credential("aws1").id == cred.id
        machine_id = add_machine(ctx, seeded.group, "web-1")
        job = admin.create_job(JobCreate(name="j1", repository=seeded.backup, machines=[machine_id]))
        assert admin.list_jobs().items[0].id == job.id
        group = admin.update_group(seeded.group, ProtectionGroupUpdate(include_tags={"backup": "yes"}))
        assert group.include_tags == {"backup": "yes"}
        assert admin.get_machine("web-1").id == machine_id
        with pytest.raises(NotFoundError, match="does not exist"):
            admin.get_job("missing")
        session_id, task_id = _session_with_task(ctx, machine_id)
        states: list[str] = []
        for detail in admin.watch_session(session_id, poll=0.05, timeout=30):
            states.append(detail.state)
            if len(states) == 1:  # ended once the first state is seen (a timer lost that race under load)
                _finish(ctx, session_id, task_id)
        assert states[0] == "running" and states[-1] == "success"
        assert admin.server_info().server_id == ctx.server_id
    with HttpClient(live_server.url, reader_token) as reader:
        assert reader.list_credentials().total == 2
        with pytest.raises(PermissionDeniedError, match="read-only"):
            reader.delete_job("j1")
    with HttpClient(live_server.url, "ck_wrong") as wrong, pytest.raises(AuthenticationError):
        wrong.list_jobs()
