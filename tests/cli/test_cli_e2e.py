"""The CLI end to end on the embedded default (local provider): rescan, backup, browse, search,
download and restore, each a separate `cloudkeep` process exactly as an administrator runs them.

The simulated machine borrows this interpreter (``CLOUDKEEP_PYTHON``) instead of building a venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from cloudkeep.config import Settings
from cloudkeep.providers.local.machine import Lab
from cloudkeep.quickstart import stop_machine_services
from cloudkeep.server.api import create_app
from cloudkeep.server.context import open_context
from cloudkeep.server.services import tokens
from cloudkeep.server.services.schemas import TokenCreate
from tests.support.peers import free_port, port_open, wait_until

CLOUDKEEP = Path(sys.executable).with_name("cloudkeep")
PASSWORD = "cli-e2e-repository-password"


def cloudkeep(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKEEP_")}
    env.update({"CLOUDKEEP_HOME": str(home), "CK_TEST_PASSWORD": PASSWORD, "COLUMNS": "200"})
    result = subprocess.run([str(CLOUDKEEP), *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"cloudkeep {' '.join(args)}\n{result.stdout}\n{result.stderr}"
    assert PASSWORD not in result.stdout + result.stderr
    return result


@contextmanager
def remote_server(home: Path) -> Iterator[tuple[str, str]]:
    """The API on a loopback port over the same state store (in-process uvicorn), with an admin token."""
    ctx = open_context(Settings(home=home))
    token = tokens.create_token(ctx, TokenCreate(name="remote-admin", scope="admin")).token
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: port_open(port), timeout=30, what="uvicorn")
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        ctx.close()


@pytest.mark.slow
def test_rescan_backup_browse_and_restore_through_the_cli(tmp_path: Path) -> None:
    home, lab_dir = tmp_path / "home", tmp_path / "lab"
    machine = Lab(lab_dir).create_machine(
        "web-1", tags={"role": "web"}, env={"CLOUDKEEP_PYTHON": sys.executable}
    )
    data = machine.root / "srv/data"
    data.mkdir(parents=True)
    (data / "hello.txt").write_text("hello from web-1\n")
    (data / "big.bin").write_bytes(os.urandom(300_000))
    try:
        cloudkeep(home, "credential", "add", "lab", "--provider", "local", "--lab-dir", str(lab_dir))
        dist, repo = str(tmp_path / "dist"), str(tmp_path / "repo")
        cloudkeep(
            home,
            "repository",
            "add",
            "dist",
            "--purpose",
            "distribution",
            "--location",
            dist,
            "--credential",
            "lab",
        )
        cloudkeep(home, "repository", "add", "main", "--location", repo, "--credential", "lab",
                  "--password-env", "CK_TEST_PASSWORD")  # fmt: skip
        cloudkeep(home, "protection-group", "create", "web", "--credential", "lab",
                  "--distribution-repository", "dist", "--tag", "role=web")  # fmt: skip
        rescan = cloudkeep(home, "protection-group", "rescan", "web")
        assert "success" in rescan.stdout or "warning" in rescan.stdout
        machines = json.loads(cloudkeep(home, "machine", "list", "--json").stdout)["items"]
        assert [(m["name"], m["status"]) for m in machines] == [("web-1", "deployed")]
        assert "install" in cloudkeep(home, "machine", "show", "web-1").stdout

        cloudkeep(
            home, "job", "create", "web-files", "--repository", "main", "--group", "web", "--include", "/srv"
        )
        backup = cloudkeep(home, "job", "start", "web-files")
        assert "success" in backup.stdout
        points = json.loads(cloudkeep(home, "restore-point", "list", "--machine", "web-1", "--json").stdout)[
            "items"
        ]
        assert len(points) == 1
        point = points[0]["id"]
        sessions = json.loads(cloudkeep(home, "session", "list", "--kind", "backup", "--json").stdout)[
            "items"
        ]
        assert sessions[0]["state"] == "success"

        # the restore point holds the machine's own paths, not where its root sits on this host
        listing = json.loads(cloudkeep(home, "restore-point", "browse", point, "-r", "--json").stdout)
        paths = {e["path"] for e in listing["entries"]}
        assert "/srv/data/hello.txt" in paths and any(p.endswith("/big.bin") for p in paths)
        assert not any(str(machine.root) in p for p in paths)
        hits = json.loads(cloudkeep(home, "restore-point", "search", "hello.txt", "--json").stdout)
        assert len(hits) == 1 and hits[0]["path"] == "/srv/data/hello.txt"
        hello = hits[0]["path"]
        data_dir = hello.rsplit("/", 1)[0]
        cloudkeep(home, "restore", "download", point, "--path", data_dir, "--dest", str(tmp_path / "down"))
        downloaded = list((tmp_path / "down").rglob("big.bin"))
        assert downloaded and downloaded[0].read_bytes() == (data / "big.bin").read_bytes()

        # the same download from a remote administrator's machine: through the API as a tar stream
        with remote_server(home) as (url, token):
            remote = subprocess.run(
                [str(CLOUDKEEP), "--api-url", url, "--token", token, "restore", "download", point,
                 "--path", data_dir, "--dest", str(tmp_path / "remote")],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
        assert remote.returncode == 0, remote.stdout + remote.stderr
        fetched = list((tmp_path / "remote").rglob("big.bin"))
        assert fetched and fetched[0].read_bytes() == (data / "big.bin").read_bytes()

        restore = cloudkeep(home, "restore", "files", point, "--target-path", "/restored")
        assert "success" in restore.stdout
        restored = list((machine.root / "restored").rglob("hello.txt"))
        assert restored and restored[0].read_text() == "hello from web-1\n"
        audit = cloudkeep(home, "server", "audit", "--json", "--limit", "500").stdout
        assert {"protection_group.rescan", "job.start", "restore.files", "restore.download"} <= {
            e["action"] for e in json.loads(audit)["items"]
        }
    finally:
        stop_machine_services(machine.root)
