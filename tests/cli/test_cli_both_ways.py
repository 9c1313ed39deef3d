"""The CLI suite both ways (issue 16): the same scenarios, with the same outputs and exit codes,
once embedded and once against ``cloudkeep server start`` running in a subprocess (``--api-url`` and
a token), on one state store.

The restore points are real manifests and blobs in the local provider's folder store, written with
the test crafter and registered in the catalog as a backup does (``tests.server.jobs_fakes``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from cloudkeep.config import Settings
from cloudkeep.repo.volume import backup_volume
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import RestorePoint
from cloudkeep.server.services import tokens
from cloudkeep.server.services.schemas import TokenCreate
from tests.cli.server_process import start_server
from tests.cli.test_cli_core import Invoke, ok
from tests.cli.test_cli_core import run as run
from tests.server.jobs_fakes import World, build_world, crafted_point, open_engine
from tests.support.hostile import file, folder
from tests.support.peers import free_port

CLOUDKEEP = Path(sys.executable).with_name("cloudkeep")
PASSWORD = "correct horse battery"
MODES = ["embedded", "remote"]
FAR_FUTURE = datetime(2999, 1, 1, tzinfo=UTC)


@pytest.fixture
def server_env(settings: Settings, ctx: ServerContext) -> Iterator[dict[str, str]]:
    """``cloudkeep server start`` on the test's state store; the environment of a remote operator."""
    token = tokens.create_token(ctx, TokenCreate(name="both-ways", scope="admin")).token
    port = free_port()
    env = {
        **os.environ,
        "CLOUDKEEP_HOME": str(settings.home),
        "CLOUDKEEP_DATABASE_URL": settings.effective_database_url,
    }
    env.pop("CLOUDKEEP_API_URL", None)
    server, health = start_server(port, env)
    try:
        assert health.status_code == 200
        yield {
            "CLOUDKEEP_API_URL": f"http://127.0.0.1:{port}",
            "CLOUDKEEP_API_TOKEN": token,
            "CLOUDKEEP_HOME": "/nonexistent/never-used",
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(params=MODES)
def cli(request: pytest.FixtureRequest, run: Invoke) -> Invoke:
    """The CLI embedded, or as a remote operator of the running server."""
    if request.param == "embedded":
        return run
    env: dict[str, str] = request.getfixturevalue("server_env")

    def remote(*args: str, input: str | None = None, env_extra: dict[str, str] | None = None) -> Result:
        return run(*args, input=input, env_extra={**env, **(env_extra or {})})

    return remote


def world_with_point(ctx: ServerContext, lab: Path) -> tuple[World, str]:
    world = build_world(ctx, lab, machines=2, undeployed=(1,), password=PASSWORD)
    point = crafted_point(world, [
        folder("etc", [file("hosts", b"127.0.0.1 lo\n"), folder("ssh", [file("config", b"Host *\n")])]),
        folder("srv", [file("data.bin", b"x" * 70_000)]),
    ])  # fmt: skip
    return world, point


def as_json(result: Result) -> Any:
    return json.loads(ok(result))


def test_inventory_and_repository_maintenance(cli: Invoke, tmp_path: Path) -> None:
    """Credential, repository and job administration, then stats and check of the new repository."""
    lab = tmp_path / "lab"
    added = ok(cli("credential", "add", "lab", "--provider", "local", "--lab-dir", str(lab), "--no-prompt"))
    assert "credential lab added" in added
    updated = ok(cli("credential", "update", "lab", "--description", "the lab"))
    assert "credential lab updated (description)" in updated
    assert as_json(cli("credential", "show", "lab", "--json"))["description"] == "the lab"
    nothing = cli("credential", "update", "lab")
    assert nothing.exit_code == 2 and "nothing to change" in nothing.output

    pw = {"CK_TEST_PW": PASSWORD}
    repo_args = ["--location", "backups", "--credential", "lab", "--password-env", "CK_TEST_PW"]
    ok(cli("repository", "add", "main", *repo_args, env_extra=pw))
    renamed = as_json(
        cli("repository", "update", "main", "--name", "primary", "--option", "note=x", "--json")
    )
    assert renamed["name"] == "primary" and renamed["options"] == {"note": "x"}
    fixed = cli("repository", "update", "primary", "--option", "pack_size=1")
    assert fixed.exit_code == 2 and "cannot change" in fixed.output and "Traceback" not in fixed.output

    stats = as_json(cli("repository", "stats", "primary", "--json"))
    assert stats["snapshots"] == 0 and stats["catalog_restore_points"] == 0 and stats["keys"] == 1
    check = as_json(cli("repository", "check", "primary", "--json"))
    assert check["ok"] is True and check["problems"] == []


def test_restore_points_browse_download_delete(cli: Invoke, ctx: ServerContext, tmp_path: Path) -> None:
    """Browse with ``--path``, download, then delete a restore point; an immutable one is refused."""
    world, point = world_with_point(ctx, tmp_path / "lab")
    listed = as_json(cli("restore-point", "list", "--json"))
    assert [p["id"] for p in listed["items"]] == [point]
    browsed = as_json(cli("restore-point", "browse", point[:8], "--path", "/etc", "--json"))
    assert {e["path"] for e in browsed["entries"]} == {"/etc/hosts", "/etc/ssh"}

    dest = tmp_path / "dest"
    ok(cli("restore", "download", point, "--path", "/etc", "--dest", str(dest)))
    assert [p.read_bytes() for p in dest.rglob("hosts")] == [b"127.0.0.1 lo\n"]

    stats = as_json(cli("repository", "stats", world.repository_id, "--json"))
    assert stats["snapshots"] == 1 and stats["catalog_restore_points"] == 1

    dry = cli("restore-point", "delete", point, "--dry-run")
    assert dry.exit_code == 0 and "would delete" in dry.output
    refused = cli("restore-point", "delete", point)  # no terminal and no --yes
    assert refused.exit_code == 2 and "--yes" in refused.output
    assert as_json(cli("restore-point", "show", point, "--json"))["removed_at"] is None

    deleted = as_json(cli("restore-point", "delete", point, "--yes", "--json"))
    assert deleted["target_id"] == point
    shown = as_json(cli("restore-point", "show", point, "--json"))
    assert shown["removed_at"] is not None
    after = as_json(cli("repository", "stats", world.repository_id, "--json"))
    assert after["snapshots"] == 0 and after["catalog_restore_points"] == 0
    session = as_json(cli("session", "show", deleted["session_id"], "--json"))
    assert session["kind"] == "maintenance" and session["state"] == "success"
    again = cli("restore-point", "delete", point, "--yes")
    assert again.exit_code == 1 and "already removed" in again.output

    locked = crafted_point(world, [folder("etc", [file("motd", b"hi\n")])])
    with ctx.db() as db:
        row = db.get(RestorePoint, locked)
        assert row is not None
        row.retain_until = FAR_FUTURE  # immutable whatever today is
    immutable = cli("restore-point", "delete", locked, "--yes")
    assert immutable.exit_code == 1 and "immutable until" in immutable.output
    assert as_json(cli("restore-point", "show", locked, "--json"))["removed_at"] is None


def test_job_create_start_and_list(cli: Invoke, ctx: ServerContext, tmp_path: Path) -> None:
    """A job on a machine whose agent never installed: the session ends failed, exit 1, both ways."""
    world, _ = world_with_point(ctx, tmp_path / "lab")
    machine = world.machine_ids[1]
    job = ["--repository", world.repository_id, "--machine", machine, "--include", "/etc", "--json"]
    created = as_json(cli("job", "create", "nightly", *job))
    started = cli("job", "start", "nightly")
    assert started.exit_code == 1 and "machine vm-1 is not deployed" in started.output
    sessions = as_json(cli("session", "list", "--job", "nightly", "--json"))
    assert [s["state"] for s in sessions["items"]] == ["failed"]
    assert as_json(cli("job", "list", "--json"))["items"][0]["id"] == created["id"]


def test_export_streams_a_volume_image(cli: Invoke, ctx: ServerContext, tmp_path: Path) -> None:
    """`restore export` writes the same image both ways (remote: written on the server, streamed)."""
    world = build_world(ctx, tmp_path / "lab", machines=1, password=PASSWORD)
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(range(256)) * 4096 + b"tail")  # 1 MiB and a bit: more than one chunk
    repo = open_engine(world)
    try:
        snapshot = backup_volume(repo, disk, hostname="vm-0")
    finally:
        repo.close()
        repo.store.close()
    with ctx.db() as db:
        point = RestorePoint(
            repository_id=world.repository_id, machine_id=world.machine_ids[0], snapshot_id=snapshot.id,
            mode="volume",
        )  # fmt: skip
        db.add(point)
        db.flush()
        point_id = point.id
    image = tmp_path / "out" / "exported.raw"
    image.parent.mkdir()
    exported = as_json(cli("restore", "export", point_id, "--dest", str(image), "--json"))
    assert image.read_bytes() == disk.read_bytes()
    assert exported["disk_bytes"] == disk.stat().st_size and exported["path"] == str(image)
    assert list(image.parent.iterdir()) == [image]  # no partial file left
    again = cli("restore", "export", point_id, "--dest", str(image))
    assert again.exit_code == 2 and "already exists" in again.output


def test_host_commands_say_where_they_run(cli: Invoke, request: pytest.FixtureRequest) -> None:
    """`host status`/`backup` read the server either way; protect/unprotect act on the server's host."""
    status = cli("host", "status")
    assert status.exit_code == 1 and "not protected yet" in status.output
    if "remote" in request.node.callspec.id:  # never silently acting on the operator's own machine
        for command in (["unprotect"], ["protect", "--path", "/etc"]):
            refused = cli("host", *command)
            assert refused.exit_code == 2 and "runs there, without --api-url" in refused.output, command


def test_forget_prune_password_and_key_rotation(cli: Invoke, ctx: ServerContext, tmp_path: Path) -> None:
    """Maintenance that writes runs as sessions; after a password change the data still reads."""
    world, first = world_with_point(ctx, tmp_path / "lab")
    second = crafted_point(world, [folder("etc", [file("hosts", b"::1 lo\n")])])
    repository = world.repository_id
    refused = cli("repository", "forget", repository, "--keep-last", "1")
    assert refused.exit_code == 2 and "--yes" in refused.output
    dry = as_json(cli("repository", "forget", repository, "--keep-last", "1", "--dry-run", "--json"))
    assert dry["session_id"] is None and len(dry["removed"]) == 1 and len(dry["kept"]) == 1
    assert as_json(cli("repository", "stats", repository, "--json"))["snapshots"] == 2
    forgot = as_json(cli("repository", "forget", repository, "--keep-last", "1", "--yes", "--json"))
    assert forgot["removed"] == dry["removed"] and forgot["kept"] == dry["kept"]
    points = {
        p["id"]: p for p in as_json(cli("restore-point", "list", "--include-removed", "--json"))["items"]
    }
    assert sorted(p["removed_at"] is None for p in points.values()) == [False, True] and set(points) == {
        first,
        second,
    }
    assert "would delete data of repository" in ok(cli("repository", "prune", repository, "--dry-run"))
    unknown = cli("repository", "prune", "no-such-repository", "--dry-run")
    assert unknown.exit_code == 1 and "does not exist" in unknown.output
    pruned = as_json(cli("repository", "prune", repository, "--yes", "--json"))
    for session_id in (forgot["session_id"], pruned["session_id"]):
        session = as_json(cli("session", "show", session_id, "--json"))
        assert session["kind"] == "maintenance" and session["state"] == "success"

    new = {"CK_NEW_PW": "a brand new passphrase"}
    changed = cli(
        "repository", "change-password", repository, "--password-env", "CK_NEW_PW", "--yes", env_extra=new
    )
    assert changed.exit_code == 0 and "new password" in changed.output
    kept = next(p for p in points.values() if p["removed_at"] is None)["id"]
    browsed = as_json(cli("restore-point", "browse", kept, "--path", "/etc", "--json"))
    assert browsed["entries"]
    assert as_json(cli("repository", "stats", repository, "--json"))["keys"] == 1  # the old key went

    assert "would re-encrypt" in ok(cli("credential", "rotate-key", "--dry-run"))
    rotated = ok(cli("credential", "rotate-key", "--yes"))
    assert (
        "master key rotated" in rotated and "to rotate the cloud keys" not in rotated
    )  # local: no cloud keys
    assert as_json(cli("repository", "check", repository, "--json"))["ok"] is True
