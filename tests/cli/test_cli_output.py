"""What an operator reads (issue 16): tables that fit ``COLUMNS``, names instead of ids, sizes and
timestamps in one style, ``--json`` everywhere, confirmations on destructive commands, and shell
completion of names and enum values. Embedded mode on SQLite, through the real entry point."""

from __future__ import annotations

import json
import os
import pty
import pwd
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cloudkeep.cli.common import human_size, invoking_user_home, timestamp
from cloudkeep.cli.main import app
from cloudkeep.config import Settings
from cloudkeep.server.client import open_client
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import JobSession, RestorePoint
from tests.server.fixtures import Seeded, add_machine

Invoke = Callable[..., Result]
GIB = 1_288_490_189  # 1.2 GiB


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: these tests are about rendering, the store is covered by test_cli_core."""
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def run(settings: Settings) -> Invoke:
    runner = CliRunner()
    env = {
        "CLOUDKEEP_HOME": str(settings.home),
        "CLOUDKEEP_DATABASE_URL": settings.effective_database_url,
        "CLOUDKEEP_API_URL": "",
        "CLOUDKEEP_API_TOKEN": "",
        "COLUMNS": "80",
    }

    def invoke(*args: str, columns: int = 80, input: str | None = None) -> Result:
        return runner.invoke(app, list(args), input=input, env={**env, "COLUMNS": str(columns)})

    return invoke


def text(result: Result) -> str:
    """The output with line wrapping undone (messages wrap at COLUMNS=80)."""
    return " ".join(result.output.split())


def ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result.output


@pytest.fixture
def world(run: Invoke, ctx: ServerContext, seeded: Seeded) -> dict[str, str]:
    """A job, a machine with a long name, a restore point of 1.2 GiB and a session of the job."""
    machine_id = add_machine(ctx, seeded.group, "web-frontend-production-eu-west-1")
    ok(run("job", "create", "nightly", "--repository", seeded.backup, "--group", seeded.group,
           "--include", "/etc", "--daily", "02:00"))  # fmt: skip
    job_id = json.loads(ok(run("job", "show", "nightly", "--json")))["id"]
    repository_id = json.loads(ok(run("repository", "show", seeded.backup, "--json")))["id"]
    with ctx.db() as db:
        session = JobSession(kind="backup", state="warning", job_id=job_id, reason="1 of 1 machine(s)",
                             started_at=datetime(2026, 12, 2, 3, 0, tzinfo=UTC))  # fmt: skip
        db.add(session)
        point = RestorePoint(repository_id=repository_id, machine_id=machine_id, job_id=job_id,
                             snapshot_id="ab" * 32, size=GIB, files=12,
                             created_at=datetime(2026, 12, 2, 3, 4, tzinfo=UTC))  # fmt: skip
        db.add(point)
        db.flush()
        return {"machine": machine_id, "job": job_id, "point": point.id, "session": session.id}


LISTS = [
    ("job", "list"),
    ("repository", "list"),
    ("credential", "list"),
    ("protection-group", "list"),
    ("machine", "list"),
    ("session", "list"),
    ("restore-point", "list"),
]


@pytest.mark.parametrize("command", LISTS, ids=[c[0] for c in LISTS])
def test_lists_fit_80_columns_and_name_what_ids_point_to(
    run: Invoke, world: dict[str, str], command: tuple[str, str]
) -> None:
    out = ok(run(*command))
    too_long = [line for line in out.splitlines() if len(line) > 80]
    assert not too_long, too_long
    for own_id in world.values():
        assert own_id not in out  # ids only in --json and with --wide
    wide = ok(run(*command, "--wide", columns=250))
    listed = json.loads(ok(run(*command, "--json")))["items"]
    assert listed and all(item["id"] in wide for item in listed)


def test_names_sizes_and_timestamps(run: Invoke, world: dict[str, str]) -> None:
    points = ok(run("restore-point", "list", columns=200))
    assert "web-frontend-production-eu-west-1" in points and "1.2 GiB" in points
    assert "2026-12-02 03:04 UTC" in points and world["point"][:8] in points
    assert "nightly" in ok(run("session", "list", columns=200))  # the job's name, not its id
    assert "main" in ok(run("job", "list", columns=200))  # the repository's name
    shown = ok(run("restore-point", "show", world["point"][:8], columns=200))
    assert f"web-frontend-production-eu-west-1 ({world['machine']})" in shown
    assert f"1.2 GiB ({GIB} bytes)" in shown
    # the 8-character ids lists and messages print are accepted back, by every group
    assert json.loads(ok(run("session", "show", world["session"][:8], "--json")))["id"] == world["session"]
    assert json.loads(ok(run("job", "show", world["job"][:8], "--json")))["name"] == "nightly"
    for group in ("repository", "credential", "protection-group", "machine"):
        full = json.loads(ok(run(group, "list", "--json")))["items"][0]["id"]
        assert json.loads(ok(run(group, "show", full[:8], "--json")))["id"] == full, group


def test_formatters() -> None:
    assert [human_size(v) for v in (0, 1023, 1536, GIB, None)] == ["0 B", "1023 B", "1.5 KiB", "1.2 GiB", "-"]
    assert timestamp(datetime(2026, 12, 2, 3, 0)) == "2026-12-02 03:00 UTC"  # naive: stored UTC
    assert timestamp(datetime.fromisoformat("2026-12-02T04:00+01:00")) == "2026-12-02 03:00 UTC"


def test_json_on_version_and_state_changes(run: Invoke, world: dict[str, str]) -> None:
    assert re.match(r"\d", json.loads(ok(run("version", "--json")))["version"])
    assert json.loads(ok(run("job", "disable", "nightly", "--json")))["enabled"] is False
    assert json.loads(ok(run("job", "enable", "nightly", "--json")))["enabled"] is True
    assert json.loads(ok(run("job", "stop", "nightly", "--json"))) == {"ok": True, "stopping": []}


DESTRUCTIVE = [
    (("job", "delete", "nightly"), ("job", "show", "nightly")),
    (("protection-group", "delete", "spare"), ("protection-group", "show", "spare")),
    (("repository", "remove", "spare-repo"), ("repository", "show", "spare-repo")),
    (("credential", "remove", "unused"), ("credential", "show", "unused")),
]


@pytest.mark.parametrize(("delete", "show"), DESTRUCTIVE, ids=[d[0][0] for d in DESTRUCTIVE])
def test_destructive_commands_confirm(
    run: Invoke, world: dict[str, str], seeded: Seeded, delete: tuple[str, ...], show: tuple[str, ...]
) -> None:
    ok(run("protection-group", "create", "spare", "--credential", seeded.credential,
           "--distribution-repository", seeded.distribution))  # fmt: skip
    ok(run("credential", "add", "unused", "--provider", "local", "--lab-dir", str(seeded.lab_dir)))
    ok(run("repository", "add", "spare-repo", "--purpose", "distribution", "--location", "spare",
           "--credential", seeded.credential))  # fmt: skip
    refused = run(*delete)
    assert refused.exit_code == 2 and "Refused without a terminal: pass --yes" in text(refused)
    dry = run(*delete, "--dry-run")
    assert dry.exit_code == 0 and "would" in dry.output and "nothing changed" in text(dry)
    planned = json.loads(ok(run(*delete, "--dry-run", "--json")))
    assert planned["dry_run"] is True and planned["would_delete"]["name"] == delete[2]
    ok(run(*show))  # still there after both
    deleted = json.loads(ok(run(*delete, "--yes", "--json")))
    assert deleted["ok"] is True and deleted["name"] == delete[2]
    assert run(*show).exit_code == 1


def test_in_place_restore_confirms(run: Invoke, world: dict[str, str]) -> None:
    point = world["point"][:8]
    refused = run("restore", "files", point, "--path", "/etc/hosts", "--in-place")
    assert refused.exit_code == 2 and "Refused without a terminal" in text(refused)
    assert "/etc/hosts in place on web-frontend-production-eu-west-1" in text(refused)
    dry = json.loads(ok(run("restore", "files", point, "--path", "/etc/hosts", "--in-place", "--dry-run",
                            "--json")))  # fmt: skip
    assert dry["dry_run"] is True and dry["in_place"] is True and dry["restore_point_id"] == world["point"]
    restores = json.loads(ok(run("session", "list", "--kind", "restore", "--json")))
    assert restores["total"] == 0  # neither started a restore


def _complete(settings: Settings | None, line: str, home: Path | None = None) -> list[str]:
    env = {"_CLOUDKEEP_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": line,
           "CLOUDKEEP_API_URL": "", "CLOUDKEEP_API_TOKEN": ""}  # fmt: skip
    if settings is not None:
        env |= {"CLOUDKEEP_HOME": str(settings.home),
                "CLOUDKEEP_DATABASE_URL": settings.effective_database_url}  # fmt: skip
    if home is not None:
        env |= {"CLOUDKEEP_HOME": str(home), "CLOUDKEEP_DATABASE_URL": ""}
    result = CliRunner().invoke(app, [], prog_name="cloudkeep", env=env)
    assert result.exit_code == 0, result.output
    return re.findall(r'"([^"\n]+)"', result.output)


def test_completion_of_names_and_values(settings: Settings, world: dict[str, str], tmp_path: Path) -> None:
    assert _complete(settings, "cloudkeep job show ") == ["nightly"]
    assert _complete(settings, "cloudkeep job create x --repository m") == ["main"]
    assert _complete(settings, "cloudkeep repository show ") == ["dist", "main"]
    assert _complete(settings, "cloudkeep restore-point list --machine web") == [
        "web-frontend-production-eu-west-1"
    ]
    assert _complete(settings, "cloudkeep credential remove ") == ["lab"]
    assert _complete(settings, "cloudkeep job create x --mode ") == ["entire", "volume", "file"]
    assert _complete(settings, "cloudkeep credential add x --provider a") == ["aws", "azure"]
    # nothing to offer, and nothing created, where there is no server yet; no error either
    assert _complete(None, "cloudkeep job show ", home=tmp_path / "nowhere") == []
    assert not (tmp_path / "nowhere").exists()


def test_sudo_uses_the_invoking_users_home() -> None:
    nobody = pwd.getpwnam("nobody").pw_dir
    assert invoking_user_home({"SUDO_USER": "nobody"}, euid=0) == Path(nobody) / ".cloudkeep"
    assert invoking_user_home({"SUDO_USER": "nobody", "CLOUDKEEP_HOME": "/srv/ck"}, euid=0) is None
    assert invoking_user_home({"SUDO_USER": "nobody"}, euid=1000) is None  # not root: its own home
    assert invoking_user_home({"SUDO_USER": "root"}, euid=0) is None
    assert invoking_user_home({"SUDO_USER": "no-such-user-here"}, euid=0) is None
    assert invoking_user_home({}, euid=0) is None


def test_json_of_bundle_build_and_show(run: Invoke, world: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "bundle"
    built = json.loads(ok(run("bundle", "build", "--no-wheels", "--out", str(folder), "--json")))
    assert built["folder"] == str(folder) and built["archives"]
    shown = json.loads(ok(run("bundle", "show", str(folder), "--json")))
    assert shown["valid"] is True and shown["version"] == built["version"] and shown["files"]
    (folder / sorted(shown["files"])[0]).write_bytes(b"tampered")
    tampered = json.loads(ok(run("bundle", "show", str(folder), "--json")))
    assert tampered["valid"] is False and tampered["verdict"].startswith("NOT VALID")


def test_token_revoke_json(run: Invoke, world: dict[str, str]) -> None:
    ok(run("server", "token", "create", "ci", "--scope", "read-only", "--json"))
    revoked = json.loads(ok(run("server", "token", "revoke", "ci", "--json")))
    assert revoked["name"] == "ci" and revoked["revoked_at"]
    assert "token" not in revoked  # the secret itself is never shown again


@pytest.mark.parametrize(("answer", "deleted"), [("n", False), ("y", True)])
def test_a_terminal_is_asked(settings: Settings, world: dict[str, str], answer: str, deleted: bool) -> None:
    """On a terminal (a real pty as stdin) the question is asked; only 'y' deletes."""
    script = Path(sys.executable).with_name("cloudkeep")
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKEEP_")}
    env |= {"CLOUDKEEP_HOME": str(settings.home), "CLOUDKEEP_DATABASE_URL": settings.effective_database_url}
    try:
        os.write(leader, f"{answer}\n".encode())
        result = subprocess.run([str(script), "job", "delete", "nightly"], stdin=follower,
                                capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    finally:
        os.close(leader)
        os.close(follower)
    assert "Delete job nightly" in result.stdout + result.stderr
    assert result.returncode == (0 if deleted else 2), result.stdout + result.stderr
    with open_client(settings) as c:
        assert [j.name for j in c.list_jobs().items] == ([] if deleted else ["nightly"])
