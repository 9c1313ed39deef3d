"""Every command works the same embedded and remote: through the real CLI, against a real uvicorn
server (``live_server``) over the same state store as the embedded runs.

The restore point is real: a manifest and its blobs written into the local provider's folder store
with the test crafter (``tests.support.hostile``), registered in the catalog the way a backup does.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from click.testing import Result

from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import JobSession
from tests.cli.test_cli_core import Invoke, ok
from tests.cli.test_cli_core import run as run
from tests.server.fixtures import LiveServer
from tests.server.jobs_fakes import build_world, crafted_point
from tests.support.hostile import file, folder

PASSWORD = "correct horse battery"
BIG = os.urandom(1_500_000)  # several chunks, larger than one read of the streamed download


def point_with_files(ctx: ServerContext, lab: Path) -> str:
    """A restore point holding /etc/hosts and /srv/big.bin; returns its restore point id."""
    world = build_world(ctx, lab, machines=1, password=PASSWORD)
    return crafted_point(world, [
        folder("etc", [file("hosts", b"127.0.0.1 lo\n"), folder("ssh", [file("config", b"Host *\n")])]),
        folder("srv", [file("big.bin", BIG)]),
    ])  # fmt: skip


def remote(live_server: LiveServer, token: str, url: str | None = None) -> dict[str, str]:
    """Environment of a remote administrator: no usable home, the server's URL and a token."""
    return {
        "CLOUDKEEP_API_URL": url or live_server.url,
        "CLOUDKEEP_API_TOKEN": token,
        "CLOUDKEEP_HOME": "/nonexistent/never-used",
    }


def browse(run: Invoke, point: str, *args: str, env: dict[str, str] | None = None) -> Result:
    return run("restore-point", "browse", point, *args, "--json", env_extra=env)


def test_browse_with_a_path_works_remote_as_embedded(
    run: Invoke, ctx: ServerContext, live_server: LiveServer, admin_token: str, tmp_path: Path
) -> None:
    """``--path`` once collided with the HTTP helper's own ``path`` argument (issue 16)."""
    point = point_with_files(ctx, tmp_path / "lab")
    embedded = json.loads(ok(browse(run, point, "--path", "/etc")))
    as_admin = remote(live_server, admin_token)
    remote_listing = json.loads(ok(browse(run, point, "--path", "/etc", env=as_admin)))
    assert remote_listing == embedded
    assert {e["path"] for e in remote_listing["entries"]} == {"/etc/hosts", "/etc/ssh"}
    missing = browse(run, point, "--path", "/no/such/dir", env=as_admin)
    assert missing.exit_code == 1 and "error:" in missing.output and "Traceback" not in missing.output
    assert "/no/such/dir" in missing.output


def test_api_url_accepts_the_printed_url_and_a_trailing_slash(
    run: Invoke, ctx: ServerContext, live_server: LiveServer, admin_token: str
) -> None:
    """`server start` prints ``…/api/v1``; an operator pastes it (or the base URL) as it is."""
    base = live_server.url
    for url in [base, base + "/", base + "/api/v1", base + "/api/v1/"]:
        as_admin = remote(live_server, admin_token, url)
        info = json.loads(ok(run("server", "info", "--json", env_extra=as_admin)))
        assert info["server_id"] == ctx.server_id, url
        flag = run("--api-url", url, "job", "list", "--json", env_extra=remote(live_server, admin_token))
        assert json.loads(ok(flag))["total"] == 0, url


def test_bundle_show_never_creates_server_state(
    run: Invoke, ctx: ServerContext, live_server: LiveServer, admin_token: str, tmp_path: Path
) -> None:
    """Read-only `bundle show` once left a fresh database and master key wherever it ran (issue 16)."""
    empty = tmp_path / "operator-home"
    empty.mkdir()
    fresh = {"CLOUDKEEP_HOME": str(empty), "CLOUDKEEP_DATABASE_URL": ""}
    missing = run("bundle", "show", env_extra=fresh)
    assert missing.exit_code == 1 and "no cloudkeep server state" in missing.output
    assert "hint:" in missing.output and list(empty.iterdir()) == []

    folder = tmp_path / "bundle"
    ok(run("bundle", "build", "--no-wheels", "--out", str(folder)))  # embedded, on the server's own state
    as_operator = {**remote(live_server, admin_token), **fresh}
    shown = ok(run("bundle", "show", str(folder), env_extra=as_operator))
    assert "signature and checksums OK" in shown and list(empty.iterdir()) == []
    no_folder = run("bundle", "show", env_extra=as_operator)
    assert no_folder.exit_code == 2 and "name a bundle folder" in no_folder.output
    refused = run("bundle", "build", "--no-wheels", "--out", str(tmp_path / "other"), env_extra=as_operator)
    assert refused.exit_code == 2 and "server host" in refused.output
    assert list(empty.iterdir()) == [] and not (tmp_path / "other").exists()


def test_the_short_ids_commands_print_are_accepted_everywhere(
    run: Invoke, ctx: ServerContext, live_server: LiveServer, admin_token: str, tmp_path: Path
) -> None:
    """quickstart and `host` print 8 characters of session and snapshot ids; each must resolve."""
    point = point_with_files(ctx, tmp_path / "lab")
    shown = json.loads(ok(run("restore-point", "show", point, "--json")))
    as_admin = remote(live_server, admin_token)
    for short in (point[:8], shown["snapshot_id"][:8]):
        for env in (None, as_admin):
            listing = json.loads(ok(browse(run, short, "--path", "/etc", env=env)))
            assert {e["path"] for e in listing["entries"]} == {"/etc/hosts", "/etc/ssh"}, (short, env)
    machine = shown["machine_id"]
    assert json.loads(ok(run("machine", "show", machine[:8], "--json")))["id"] == machine
    with ctx.db() as db:
        sessions = [JobSession(id=f"abcd{n}" + "0" * 27, kind="backup", state="success") for n in (1, 2)]
        db.add_all(sessions)
    first = sessions[0].id
    assert json.loads(ok(run("session", "show", first[:8], "--json")))["id"] == first
    assert json.loads(ok(run("session", "show", first[:8], "--json", env_extra=as_admin)))["id"] == first

    for env in (None, as_admin):
        ambiguous = run("session", "show", "abcd", env_extra=env)
        assert ambiguous.exit_code == 2 and "ambiguous" in ambiguous.output
        assert all(s.id in ambiguous.output for s in sessions) and "more characters" in ambiguous.output
        too_short = run("session", "show", "abc", env_extra=env)
        assert too_short.exit_code == 1 and "does not exist" in too_short.output
        wildcard = run("session", "show", "abc%", env_extra=env)  # LIKE wildcards are literal
        assert wildcard.exit_code == 1 and "does not exist" in wildcard.output


def test_remote_download_streams_and_extracts_like_embedded(
    run: Invoke,
    ctx: ServerContext,
    live_server: LiveServer,
    admin_token: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tar travels through files on both sides; what lands in dest is what embedded mode writes."""
    point = point_with_files(ctx, tmp_path / "lab")
    server_temps = tmp_path / "server-temps"
    server_temps.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(server_temps))  # the server runs in this process
    paths = ["--path", "/srv", "--path", "/etc"]
    ok(run("restore", "download", point[:8], *paths, "--dest", str(tmp_path / "here")))
    read_whole = httpx.Response.read

    def never_the_whole_tar(response: httpx.Response) -> bytes:
        assert response.headers.get("content-type") != "application/x-tar", "tar read whole into memory"
        return read_whole(response)

    monkeypatch.setattr(httpx.Response, "read", never_the_whole_tar)
    as_admin = remote(live_server, admin_token)
    ok(run("restore", "download", point[:8], *paths, "--dest", str(tmp_path / "there"), env_extra=as_admin))
    [local] = (tmp_path / "here").rglob("big.bin")
    [fetched] = (tmp_path / "there").rglob("big.bin")
    assert fetched.read_bytes() == local.read_bytes() == BIG
    assert fetched.relative_to(tmp_path / "there") == local.relative_to(tmp_path / "here")
    assert [p.read_bytes() for p in (tmp_path / "there").rglob("hosts")] == [b"127.0.0.1 lo\n"]
    assert sorted(p.name for p in (tmp_path / "there").iterdir()) == sorted(
        p.name for p in (tmp_path / "here").iterdir()
    )  # no spool file left in dest
    deadline = time.monotonic() + 10  # the server removes its tar after the response is sent
    while list(server_temps.iterdir()):
        assert time.monotonic() < deadline, list(server_temps.iterdir())
        time.sleep(0.05)
