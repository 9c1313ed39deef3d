"""One session's detail comes a page of tasks at a time, with counts of all of them (issue 18: at
5,000 machines the unpaged detail took seconds): the service, the CLI embedded and remote (a real
uvicorn server, ``live_server``), and ``--all``.

The session is written directly (the job runner is tested elsewhere).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from cloudkeep.errors import ConfigurationError
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import JobSession, SessionTask
from cloudkeep.server.services import sessions
from tests.cli.test_cli_core import Invoke, ok
from tests.cli.test_cli_core import run as run
from tests.cli.test_cli_remote_parity import remote
from tests.server.fixtures import LiveServer, Seeded, add_machine

T0 = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
STATES = ["success", "success", "failed", "success", "warning", "running", "success"]


def _session(ctx: ServerContext, seeded: Seeded) -> tuple[str, list[str]]:
    machines = [add_machine(ctx, seeded.group, f"web-{n}") for n in range(len(STATES))]
    with ctx.db() as db:
        session = JobSession(kind="backup", state="running", started_at=T0)
        db.add(session)
        db.flush()
        tasks = [
            SessionTask(session_id=session.id, machine_id=machine, state=state,
                        started_at=T0 + timedelta(seconds=n), log=[{"message": f"line of task {n}"}])
            for n, (machine, state) in enumerate(zip(machines, STATES, strict=True))
        ]  # fmt: skip
        db.add_all(tasks)
        db.flush()
        return session.id, [task.id for task in tasks]


def test_pages_of_tasks_with_counts_of_all(ctx: ServerContext, seeded: Seeded) -> None:
    session_id, task_ids = _session(ctx, seeded)
    pages = [sessions.get_session(ctx, session_id, limit=3, offset=offset) for offset in (0, 3, 6)]

    assert [[t.id for t in page.tasks] for page in pages] == [task_ids[0:3], task_ids[3:6], task_ids[6:]]
    assert [t.machine_name for t in pages[1].tasks] == ["web-3", "web-4", "web-5"]
    assert [line["message"] for line in pages[2].log] == ["line of task 6"]  # this page's tasks only
    for page in pages:
        assert page.task_total == 7
        assert page.task_counts == {"success": 4, "failed": 1, "warning": 1, "running": 1}
    assert (pages[1].task_limit, pages[1].task_offset) == (3, 3)
    with pytest.raises(ConfigurationError, match="limit"):
        sessions.get_session(ctx, session_id, limit=0)
    with pytest.raises(ConfigurationError, match="limit"):
        sessions.get_session(ctx, session_id, limit=501)


def test_session_show_pages_embedded_and_remote(
    run: Invoke, ctx: ServerContext, seeded: Seeded, live_server: LiveServer, admin_token: str
) -> None:
    session_id, task_ids = _session(ctx, seeded)
    for env in (None, remote(live_server, admin_token)):
        page = json.loads(ok(run("session", "show", session_id, "--json", "--limit", "2", "--offset", "4",
                                 env_extra=env)))  # fmt: skip
        assert [t["id"] for t in page["tasks"]] == task_ids[4:6], env
        assert page["task_total"] == 7 and page["task_counts"]["warning"] == 1

        every = json.loads(ok(run("session", "show", session_id, "--json", "--all", env_extra=env)))
        assert [t["id"] for t in every["tasks"]] == task_ids, env
        assert len(every["log"]) == 7

        text = ok(run("session", "show", session_id, "--limit", "2", env_extra=env))
        assert "Tasks 1-2 of 7" in text and "--offset 2" in text and "web-2" not in text

    refused = run("session", "show", session_id, "--limit", "0")
    assert refused.exit_code == 2
