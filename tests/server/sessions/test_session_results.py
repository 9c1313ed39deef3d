"""Machine results are hostile input: each is read as its typed result body where a session uses it.

A result of the wrong shape, with a field the protocol does not know or a value too big, fails that
machine's task with a reason naming the machine and the bad field; the session still ends and
nothing is recorded from it. Results as machines of the previous version send them still read.

Commands go to the in-process FAKE dispatcher of jobs_fakes, whose ``wait`` is replaced here to
answer exactly the payload under test (the real machine side is checked by ``typed_payload``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from tests.server.jobs_fakes import FakeDispatcher, World, build_world, make_context
from tests.server.restore.test_restore import add_point

from cloudkeep.machine.handlers import typed_payload
from cloudkeep.machine.services import service_status
from cloudkeep.protocol.bodies import (
    RESULT_BODIES,
    BackupResult,
    CheckResult,
    DeliveredResult,
    PingResult,
    RunScriptResult,
)
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import JobSession, RestorePoint, SessionTask
from cloudkeep.server.jobs import start_job
from cloudkeep.server.jobs.health import start_health_check
from cloudkeep.server.restore import browse, start_file_restore, start_volume_restore
from cloudkeep.server.sessions import TaskFailed, read_result


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ServerContext]:
    context = make_context(tmp_path)
    yield context
    context.close()


@pytest.fixture
def world(ctx: ServerContext, tmp_path: Path) -> World:
    return build_world(ctx, tmp_path / "lab", machines=2, undeployed=(1,))


class Answering(FakeDispatcher):
    """Answers every command of one kind with ``payloads[kind]`` (others as the fake does)."""

    def __init__(self, ctx: ServerContext, **payloads: dict[str, Any]) -> None:
        super().__init__(ctx)
        self.payloads = payloads

    def wait(self, command_id: str, **kw: Any) -> dict[str, Any]:
        command = next(s for s in self.sent if s.command_id == command_id)
        if command.kind not in self.payloads:
            return super().wait(command_id, **kw)
        payload = self.payloads[command.kind]
        self._finish(command_id, "done", {"ok": True, "payload": payload})
        return payload


def ended(ctx: ServerContext, session_id: str) -> tuple[JobSession, list[SessionTask]]:
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None
        return session, list(session.tasks)


MALFORMED_BACKUPS = [
    pytest.param({"snapshot_id": "a1", "stats": {}, "evil": "x"}, "evil: Extra inputs", id="extra-field"),
    pytest.param({"snapshot_id": "a" * 5000}, "snapshot_id: String should have at most", id="oversized-id"),
    pytest.param({"snapshot_id": "a1", "warnings": "a line"}, "warnings: Input should be", id="wrong-type"),
    pytest.param({"snapshot_id": ["a1"]}, "snapshot_id: Input should be", id="id-not-a-string"),
]


@pytest.mark.parametrize(("payload", "why"), MALFORMED_BACKUPS)
def test_a_malformed_backup_result_fails_that_task_and_records_nothing(
    ctx: ServerContext, world: World, payload: dict[str, Any], why: str
) -> None:
    session_id = start_job(ctx, world.add_job(), wait=True, dispatcher=Answering(ctx, backup=payload))
    session, tasks = ended(ctx, session_id)
    assert session.state == "failed" and session.ended_at is not None
    task = next(t for t in tasks if t.machine_id == world.machine_ids[0])
    assert task.state == "failed" and task.ended_at is not None
    assert "vm-0 sent a malformed backup result" in task.reason and why in task.reason
    assert "a" * 200 not in task.reason  # the hostile value itself is not repeated
    with ctx.db() as db:
        assert list(db.scalars(select(RestorePoint))) == []


def test_retention_the_server_cannot_apply_is_a_warning_and_the_backup_stands(
    ctx: ServerContext, world: World
) -> None:
    """Retention runs on the server (no machine is asked): a repository it cannot open (here never
    initialised, the fake backups write nothing) is a warning, and both backups are recorded."""
    job_id = world.add_job(retention={"keep_last": 1})
    fake = FakeDispatcher(ctx)
    start_job(ctx, job_id, wait=True, dispatcher=fake)
    session_id = start_job(ctx, job_id, wait=True, dispatcher=fake)
    session, tasks = ended(ctx, session_id)
    (task,) = [t for t in tasks if t.machine_id == world.machine_ids[0]]
    assert session.state == "warning" and task.state == "warning"
    assert "retention not applied" in task.reason
    assert fake.kinds("retention") == []
    with ctx.db() as db:
        kept = list(db.scalars(select(RestorePoint).where(RestorePoint.machine_id == world.machine_ids[0])))
    assert len(kept) == 2 and all(p.removed_at is None for p in kept)


def test_a_malformed_restore_result_fails_the_restore_session(ctx: ServerContext, world: World) -> None:
    point_id = add_point(ctx, world)
    fake = Answering(ctx, restore={"files": "many", "bytes": -1})
    session_id = start_file_restore(
        ctx, point_id, paths=None, target_machine_id=None, target_path="/r", wait=True, dispatcher=fake
    )
    session, (task,) = ended(ctx, session_id)
    assert session.state == task.state == "failed"
    assert session.reason.startswith("vm-0: vm-0 sent a malformed restore result: files: Input should be")
    assert task.files == 0 and task.progress == 0.0


def test_an_old_machines_restore_results_still_read(ctx: ServerContext, world: World) -> None:
    """Fields a machine of the previous version left out keep their old meaning (1 file, verified)."""
    volume = add_point(ctx, world, mode="volume")
    fake = Answering(ctx, restore_volume={"bytes": 4096})
    session_id = start_volume_restore(ctx, volume, target_path="/dev/xvdf", wait=True, dispatcher=fake)
    session, (task,) = ended(ctx, session_id)
    assert session.state == "success" and session.reason == "restored 1 file(s), 4096 bytes to vm-0"
    assert task.stats == {"bytes": 4096} and task.bytes_transferred == 4096


def test_a_malformed_check_result_fails_the_check_and_an_old_one_reads(
    ctx: ServerContext, world: World
) -> None:
    job_id = world.add_job()
    bad = Answering(ctx, check={"ok": "perhaps", "problems": ["x" * 9000]})
    session, (task,) = ended(ctx, start_health_check(ctx, job_id, wait=True, dispatcher=bad))
    assert session.state == task.state == "failed"
    assert session.reason.startswith("check could not run: vm-0 sent a malformed check result: ok: ")
    assert "problems.0: String should have at most" in session.reason and task.stats == {"problems": []}
    old = Answering(ctx, check={"problems": ["pack 1f: missing"]})  # no ``ok``: healthy iff no problem
    session, _tasks = ended(ctx, start_health_check(ctx, job_id, wait=True, dispatcher=old))
    assert session.state == "failed" and session.reason == "1 problem(s): pack 1f: missing"


def test_a_malformed_browse_listing_through_a_machine_is_a_clear_error(
    ctx: ServerContext, world: World
) -> None:
    point_id = add_point(ctx, world)
    fake = Answering(ctx, browse={"entries": [], "truncated": False, "next": "/etc"})
    with pytest.raises(TaskFailed, match="vm-0 sent a malformed browse result: next: Extra inputs"):
        browse(ctx, point_id, "/", via_machine=world.machine_ids[0], dispatcher=fake)
    fine = Answering(ctx, browse={"entries": [{"path": "/etc", "type": "dir"}]})
    listing = browse(ctx, point_id, "/", via_machine=world.machine_ids[0], dispatcher=fine)
    assert listing == {"entries": [{"path": "/etc", "type": "dir"}], "truncated": False}


def test_read_result_names_at_most_three_problems() -> None:
    payload = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    with pytest.raises(TaskFailed) as caught:
        read_result(BackupResult, "vm-9", payload)
    assert caught.value.message.startswith("vm-9 sent a malformed backup result: a: Extra inputs")
    assert caught.value.message.endswith("(and 2 more)") and caught.value.hint


# The fields a result body cannot do without (every other field has a default).
REQUIRED = {
    "run_script": {"exit_code": 0},
    "cancel": {"delivered_to": "c1"},
    "update_credentials": {"delivered_to": "c1"},
}


def test_every_result_body_refuses_unknown_fields_and_the_machine_builds_them() -> None:
    for kind, model in RESULT_BODIES.items():
        with pytest.raises(ValidationError):
            model.model_validate({**REQUIRED.get(kind, {}), "unknown": True})
        minimal = REQUIRED.get(kind, {})
        assert typed_payload(kind, minimal) == model.model_validate(minimal).model_dump(mode="json")
    with pytest.raises(ValidationError):  # every command kind has a result body: none goes as it is
        typed_payload("ping", {"anything": 1})
    with pytest.raises(ValidationError):  # a handler's bug is the machine's error, never sent on
        typed_payload("check", {"ok": True, "problems": None})
    assert CheckResult(problems=["x"]).healthy is False and CheckResult().healthy is True


def test_ping_run_script_and_control_results_read_as_machines_send_them(tmp_path: Path) -> None:
    sent = typed_payload("ping", {"version": "1.2", "services": service_status(tmp_path)})  # as handlers.ping
    ping = read_result(PingResult, "vm-1", sent)
    assert ping.version == "1.2" and ping.services["agent"] == {"state": "not-installed"}
    timed_out = {"exit_code": 124, "stdout": "", "stderr": "late", "timed_out": True}
    ran = read_result(RunScriptResult, "vm-1", timed_out)
    assert ran.exit_code == 124 and ran.timed_out
    delivered = read_result(DeliveredResult, "vm-1", {"delivered_to": "c1"})  # as exec answers
    assert delivered.target_state is None
    cancelled = read_result(DeliveredResult, "vm-1", {"delivered_to": "c1", "target_state": "running"})
    assert cancelled.target_state == "running"


@pytest.mark.parametrize(
    ("model", "payload", "field"),
    [
        (PingResult, {"version": "1", "services": "agent"}, "services"),
        (RunScriptResult, {"stdout": "no exit code"}, "exit_code"),
        (RunScriptResult, {"exit_code": 0, "stdout": "x" * 30_000}, "stdout"),
        (DeliveredResult, {"delivered_to": "c" * 500}, "delivered_to"),
    ],
)
def test_malformed_ping_run_script_and_control_results_fail_naming_the_field(
    model: type[Any], payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(TaskFailed, match=f"^vm-1 sent a malformed [a-z_]+ result: {field}"):
        read_result(model, "vm-1", payload)
