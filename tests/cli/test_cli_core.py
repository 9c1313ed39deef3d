"""The ``cloudkeep`` CLI through its real entry point: embedded mode on SQLite and PostgreSQL,
remote mode against a real uvicorn server, and the installed console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cloudkeep.cli.main import app
from cloudkeep.config import Settings
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import JobSession, SessionTask
from tests.cli.server_process import start_server
from tests.server.fixtures import LiveServer, Seeded, add_machine
from tests.support.peers import free_port

SECRET = "hunter2-but-longer-and-secret"
CLOUDKEEP = Path(sys.executable).with_name("cloudkeep")
Invoke = Callable[..., Result]


@pytest.fixture
def run(settings: Settings) -> Invoke:
    """Invoke the CLI in embedded mode on the test's state store; returns the click Result."""
    runner = CliRunner()
    env = {
        "CLOUDKEEP_HOME": str(settings.home),
        "CLOUDKEEP_DATABASE_URL": settings.effective_database_url,
        "CLOUDKEEP_API_URL": "",
        "CLOUDKEEP_API_TOKEN": "",
        "COLUMNS": "200",  # as wide as a pipe gets: messages unwrapped, whatever width the run inherits
    }

    def invoke(*args: str, input: str | None = None, env_extra: dict[str, str] | None = None) -> Result:
        return runner.invoke(app, list(args), input=input, env={**env, **(env_extra or {})})

    return invoke


def ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result.output


def test_embedded_administration_flow(run: Invoke, tmp_path: Path, ctx: ServerContext) -> None:
    lab = tmp_path / "lab"
    out = ok(
        run(
            "credential",
            "add",
            "lab",
            "--provider",
            "local",
            "--lab-dir",
            str(lab),
            "--secret",
            "api_key",
            input=f"{SECRET}\n",
        )
    )
    assert "credential lab added" in out and SECRET not in out
    creds = json.loads(ok(run("credential", "list", "--json")))
    assert [c["name"] for c in creds["items"]] == ["lab"] and SECRET not in json.dumps(creds)
    ok(
        run(
            "repository",
            "add",
            "dist",
            "--purpose",
            "distribution",
            "--location",
            "dist",
            "--credential",
            "lab",
        )
    )
    ok(
        run(
            "repository",
            "add",
            "main",
            "--location",
            "b",
            "--credential",
            "lab",
            "--password-stdin",
            "--no-init",
            input="correct-horse-battery\n",
        )
    )
    table = ok(run("repository", "list"))
    assert "dist" in table and "distribution" in table and "correct-horse" not in table
    ok(
        run(
            "protection-group",
            "create",
            "web",
            "--credential",
            "lab",
            "--distribution-repository",
            "dist",
            "--tag",
            "backup=yes",
        )
    )
    group = json.loads(ok(run("protection-group", "show", "web", "--json")))
    assert group["include_tags"] == {"backup": "yes"} and group["install_python"] is False
    ok(run("protection-group", "update", "web", "--region", "eu-west-1", "--disable", "--install-python"))
    listed = json.loads(ok(run("protection-group", "list", "--json")))["items"][0]
    assert listed["enabled"] is False and listed["install_python"] is True
    machine_id = add_machine(ctx, "web", "web-1")
    machines = json.loads(ok(run("machine", "list", "--group", "web", "--json")))
    assert [m["id"] for m in machines["items"]] == [machine_id]
    assert "Deployment steps" in ok(run("machine", "show", "web-1"))
    out = ok(
        run(
            "job",
            "create",
            "nightly",
            "--repository",
            "main",
            "--group",
            "web",
            "--daily",
            "02:00",
            "--keep-last",
            "7",
            "--include",
            "/etc",
        )
    )
    assert "next run: 20" in out
    job = json.loads(ok(run("job", "show", "nightly", "--json")))
    assert job["schedule"] == {"kind": "daily", "time": "02:00"} and job["retention"] == {"keep_last": 7}
    ok(run("job", "update", "nightly", "--no-schedule", "--machine", machine_id))
    ok(run("job", "disable", "nightly"))
    jobs = json.loads(ok(run("job", "list", "--json")))
    assert jobs["items"][0]["schedule"] is None and jobs["items"][0]["enabled"] is False
    assert json.loads(ok(run("session", "list", "--json")))["total"] == 0
    assert json.loads(ok(run("restore-point", "list", "--machine", "web-1", "--json")))["items"] == []
    token_out = ok(run("server", "token", "create", "ops", "--scope", "admin", "--json"))
    token = json.loads(token_out)["token"]
    assert token not in ok(run("server", "token", "list", "--json"))
    rotation = json.loads(ok(run("server", "rotate-key", "--json")))
    assert rotation["resealed"] == 3
    doctor = json.loads(ok(run("doctor", "--json")))
    assert doctor[0]["name"] == "lab" and doctor[0]["ok"] is True
    audit = ok(run("server", "audit", "--json", "--limit", "500"))
    assert SECRET not in audit and "correct-horse" not in audit and token not in audit
    actions = [e["action"] for e in json.loads(audit)["items"]]
    assert {"credential.create", "job.create", "job.update", "server.rotate_key", "token.create"} <= set(
        actions
    )
    assert all(e["actor"] == "local" for e in json.loads(audit)["items"])
    ok(run("job", "delete", "nightly", "--yes"))


def test_errors_are_one_line_with_a_hint_and_an_exit_code(
    run: Invoke, ctx: ServerContext, seeded: Seeded
) -> None:
    missing = run("job", "show", "nope")
    assert missing.exit_code == 1
    assert "error: job 'nope' does not exist" in missing.output and "hint:" in missing.output
    assert "Traceback" not in missing.output
    schedule = run(
        "job",
        "create",
        "bad",
        "--repository",
        seeded.backup,
        "--group",
        seeded.group,
        "--schedule",
        '{"kind": "daily", "time": "25:00"}',
    )
    assert schedule.exit_code == 2 and "error:" in schedule.output
    not_json = run(
        "job", "create", "bad", "--repository", seeded.backup, "--group", seeded.group, "--schedule", "{daily"
    )
    assert not_json.exit_code == 2 and "not valid JSON" in not_json.output
    duplicate = run("credential", "add", seeded.credential, "--provider", "local")
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    assert json.loads(ok(run("job", "list", "--json")))["total"] == 0


def test_session_watch_follows_until_the_end(run: Invoke, ctx: ServerContext, seeded: Seeded) -> None:
    """The session is written directly (the job runner is tested elsewhere); watch must end with its state."""
    machine_id = add_machine(ctx, seeded.group, "web-1")
    with ctx.db() as db:
        session = JobSession(kind="backup", state="running", started_at=datetime.now(UTC))
        db.add(session)
        db.flush()
        db.add(SessionTask(session_id=session.id, machine_id=machine_id, state="running", progress=0.5))
        session_id = session.id

    def finish() -> None:
        with ctx.db() as db:
            row = db.get(JobSession, session_id)
            assert row is not None
            row.state, row.reason = "failed", "disk full on web-1"
            for task in row.tasks:
                task.state, task.progress = "failed", 0.5

    timer = threading.Timer(0.5, finish)
    timer.start()
    result = run("session", "watch", session_id)
    timer.join()
    assert result.exit_code == 1
    assert f"session {session_id} failed: disk full on web-1" in result.output
    shown = json.loads(ok(run("session", "show", session_id, "--json")))
    assert shown["state"] == "failed" and shown["tasks"][0]["machine_id"] == machine_id
    assert shown["tasks"][0]["machine_name"] == "web-1" and "web-1" in ok(run("session", "show", session_id))


@pytest.mark.slow
def test_remote_mode_against_a_real_server(
    live_server: LiveServer, run: Invoke, seeded: Seeded, admin_token: str, reader_token: str
) -> None:
    remote = {"CLOUDKEEP_API_URL": live_server.url, "CLOUDKEEP_HOME": "/nonexistent/never-used"}
    as_admin = {**remote, "CLOUDKEEP_API_TOKEN": admin_token}
    groups = json.loads(ok(run("protection-group", "list", "--json", env_extra=as_admin)))
    assert [g["name"] for g in groups["items"]] == [seeded.group]
    ok(
        run(
            "job",
            "create",
            "remote-job",
            "--repository",
            seeded.backup,
            "--group",
            seeded.group,
            env_extra=as_admin,
        )
    )
    denied = run("--token", reader_token, "job", "delete", "remote-job", "--yes", env_extra=remote)
    assert denied.exit_code == 1 and "read-only" in denied.output
    assert "remote-job" in ok(run("--token", reader_token, "job", "list", env_extra=remote))
    audit = json.loads(ok(run("server", "audit", "--json", env_extra=as_admin)))
    assert audit["items"][0]["actor"] == "admin-token" and audit["items"][0]["action"] == "job.create"
    unreachable = run("--api-url", f"http://127.0.0.1:{free_port()}", "job", "list", env_extra=as_admin)
    assert unreachable.exit_code == 1 and "cannot reach" in unreachable.output


def _console(
    home: Path, database_url: str, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLOUDKEEP_HOME": str(home), "CLOUDKEEP_DATABASE_URL": database_url}
    env.pop("CLOUDKEEP_API_URL", None)
    return subprocess.run(
        [str(CLOUDKEEP), *args], input=input, capture_output=True, text=True, env=env, timeout=120
    )


def test_installed_console_script(settings: Settings, tmp_path: Path) -> None:
    url = settings.effective_database_url
    added = _console(
        settings.home, url, "credential", "add", "lab", "--provider", "local", "--lab-dir", str(tmp_path)
    )
    assert added.returncode == 0, added.stderr
    listed = _console(settings.home, url, "credential", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["items"][0]["name"] == "lab"
    missing = _console(settings.home, url, "repository", "show", "nope")
    assert missing.returncode == 1 and "error: repository 'nope' does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr + missing.stdout


@pytest.mark.slow
def test_server_start_serves_the_api(settings: Settings, tmp_path: Path) -> None:
    """`cloudkeep server start` in a subprocess: uvicorn with the app factory, then a remote CLI call."""
    url = settings.effective_database_url
    created = _console(settings.home, url, "server", "token", "create", "ops", "--scope", "admin", "--json")
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)["token"]
    port = free_port()
    env = {**os.environ, "CLOUDKEEP_HOME": str(settings.home), "CLOUDKEEP_DATABASE_URL": url}
    server, health = start_server(port, env)
    try:
        assert health.status_code == 200
        remote = subprocess.run(
            [
                str(CLOUDKEEP),
                "--api-url",
                f"http://127.0.0.1:{port}",
                "--token",
                token,
                "server",
                "info",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert remote.returncode == 0, remote.stderr
        assert json.loads(remote.stdout)["server_id"].startswith("ck-")
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.moto
def test_aws_credential_add_and_test_against_moto(run: Invoke, aws_options: dict[str, str]) -> None:
    """The secret key comes from a hidden prompt; `credential test` calls the real provider on moto."""
    added = run(
        "credential", "add", "aws1", "--provider", "aws", "--access-key-id", aws_options["aws_access_key_id"],
        "--option", f"endpoint_url={aws_options['endpoint_url']}", "--option", "region=us-east-1",
        input=f"{aws_options['aws_secret_access_key']}\n",
    )  # fmt: skip
    ok(added)
    shown = json.loads(ok(run("credential", "show", "aws1", "--json")))
    assert shown["options"] == {"endpoint_url": aws_options["endpoint_url"], "region": "us-east-1"}
    tested = run("credential", "test", "aws1", "--json")
    result = json.loads(tested.output)[0]
    assert result["name"] == "aws1" and result["machines_seen"] is not None, tested.output
    assert tested.exit_code == (0 if result["ok"] else 1)
    doctor = run("doctor", "--credential", "aws1")
    assert doctor.exit_code == tested.exit_code and "aws1" in doctor.output


def _command_paths(command: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    subcommands = getattr(command, "commands", {})
    paths = [prefix]
    for name, sub in subcommands.items():
        paths += _command_paths(sub, (*prefix, name))
    return paths


def test_every_command_has_working_help() -> None:
    """Help text is rendered by Rich: a stray [tag] in a help string would crash it."""
    import typer.main

    paths = _command_paths(typer.main.get_command(app))
    assert ("job", "create") in paths and ("server", "token", "create") in paths
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output, result.exception)
        assert "Usage" in result.output


@pytest.mark.parametrize(("state", "code"), [("success", 0), ("warning", 3), ("failed", 1), ("stopped", 1)])
def test_waiting_commands_exit_with_how_the_session_ended(
    run: Invoke, ctx: ServerContext, seeded: Seeded, state: str, code: int
) -> None:
    """`job start x || alert` must alert when some machines failed (warning = partial, exit 3)."""
    machine_id = add_machine(ctx, seeded.group, "web-1")
    with ctx.db() as db:
        session = JobSession(kind="backup", state=state, reason=f"ended {state}")
        db.add(session)
        db.flush()
        db.add(SessionTask(session_id=session.id, machine_id=machine_id, state=state, progress=1.0))
        session_id = session.id
    assert run("session", "watch", session_id).exit_code == code
    assert run("session", "watch", session_id, "--json").exit_code == code
    assert "Exit codes: 0 all succeeded; 3 partial" in " ".join(ok(run("--help")).split())
