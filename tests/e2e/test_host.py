"""`cloudkeep host …` through the real entry point, with a temporary folder as the host's root.

The commands' hidden ``--root`` option (for tests only) keeps everything off this machine's real
``/``: the services are installed under ``<tmp>/root/opt/cloudkeep`` and back up
``<tmp>/root/etc`` and ``<tmp>/root/home``. A separate test checks that the default root is ``/``.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloudkeep.cli.host import protect_command
from cloudkeep.config import Settings
from cloudkeep.errors import ConfigurationError
from cloudkeep.host import JOB, HostError, HostLayout, host_machine, protect
from cloudkeep.server.client import open_client

CLOUDKEEP = Path(sys.executable).with_name("cloudkeep")
REAL_INSTALL = Path("/opt/cloudkeep")


def _run(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKEEP_")}
    return subprocess.run(
        [str(CLOUDKEEP), "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**env, "COLUMNS": "200"},
    )


def _seed(root: Path) -> dict[str, bytes]:
    files = {
        "etc/app/app.conf": b"workers = 4\n",
        "etc/hostname": b"testhost\n",
        "home/alice/notes.txt": b"remember the milk\n" * 100,
        "home/alice/.cache/junk.bin": os.urandom(4096),  # excluded by default
        "srv/not-selected.txt": b"not backed up\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pids(root: Path) -> set[int]:
    """The running services recorded in the machine's pidfiles."""
    pids = {int(p.read_text().strip()) for p in (root / "var/run/cloudkeep").glob("*.pid")}
    return {pid for pid in pids if _alive(pid)}


@pytest.mark.slow
def test_protect_backup_status_unprotect_on_a_temporary_root(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "root"
    files = _seed(root)
    real_install_before = REAL_INSTALL.exists()
    try:
        protect = _run(home, "host", "protect", "--path", "/etc", "--path", "/home/", "--root", str(root))
        assert protect.returncode == 0, protect.stdout + protect.stderr
        assert "deployed" in protect.stdout and "this host is protected" in protect.stdout
        config = json.loads((root / "etc/cloudkeep/machine.json").read_text())
        assert (root / "opt/cloudkeep/VERSION").is_file() and config["machine_id"]
        assert (root / "var/lib/cloudkeep/agent.key").is_file()
        assert len(_pids(root)) == 3  # message service, agent, transport (non-systemd fallback)
        assert (home / "host-repository").is_dir()  # default repository folder under the server home

        again = _run(home, "host", "protect", "--path", "/etc", "--path", "/home", "--root", str(root))
        assert again.returncode == 0, again.stdout + again.stderr
        assert "install:skipped" in again.stdout  # idempotent: nothing reinstalled

        (root / "etc/app/app.conf").write_bytes(b"workers = 8\n")
        backup = _run(home, "host", "backup")
        assert backup.returncode == 0, backup.stdout + backup.stderr

        status = _run(home, "host", "status")
        assert status.returncode == 0, status.stderr
        assert "deployed" in status.stdout and "/etc, /home" in status.stdout

        with open_client(Settings(home=home)) as c:
            excludes = c.get_job("this-host-backup").excludes
            assert str(home.resolve()) in excludes and "/etc/cloudkeep" in excludes  # never itself
            machine = c.list_machines(group="this-host").items[0]
            points = sorted(c.list_restore_points(machine=machine.id).items, key=lambda p: p.created_at)
            assert len(points) == 3  # two protect runs and one backup
            first = tmp_path / "first"
            # Restore points name the host's own paths, wherever its root is mounted.
            c.download(points[0].id, ["/etc", "/home"], first)
        found = [p for p in first.rglob("*") if p.is_file()]
        base = next(p for p in found if p.name == "app.conf").parents[2]
        restored = {p.relative_to(base).as_posix(): p.read_bytes() for p in found}
        assert restored["etc/app/app.conf"] == files["etc/app/app.conf"]  # the first version
        assert restored["home/alice/notes.txt"] == files["home/alice/notes.txt"]
        assert not [p for p in restored if ".cache" in p or p.startswith("srv") or "cloudkeep" in p]
    finally:
        services = _pids(root)
        unprotect = _run(home, "host", "unprotect")
    assert unprotect.returncode == 0, unprotect.stdout + unprotect.stderr
    assert len(services) == 3 and not [pid for pid in services if _alive(pid)]
    assert not (root / "opt/cloudkeep").exists() and not (root / "etc/cloudkeep").exists()
    assert (root / "etc/app/app.conf").read_bytes() == b"workers = 8\n"  # the host's own files stay
    assert REAL_INSTALL.exists() == real_install_before  # this machine's real / was not touched


def test_the_default_root_is_the_real_root(tmp_path: Path) -> None:
    default = inspect.signature(protect_command).parameters["root"].default
    assert default.default == Path("/") and default.hidden
    assert HostLayout(tmp_path).root == Path("/")


def test_protect_without_paths_explains(tmp_path: Path) -> None:
    result = _run(tmp_path, "host", "protect", "--root", str(tmp_path / "root"))
    assert result.returncode != 0
    assert "give at least one path" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_status_before_protect_explains(tmp_path: Path) -> None:
    result = _run(tmp_path, "host", "status")
    assert result.returncode != 0
    assert "not protected yet" in result.stdout + result.stderr


def test_protect_is_idempotent_and_follows_new_paths(tmp_path: Path) -> None:
    """The service layer alone (no rescan): objects are created once, the job follows the paths."""
    layout = HostLayout(tmp_path / "home", tmp_path / "root")
    password = tmp_path / "password"
    password.write_text("a long passphrase\n")
    with open_client(Settings(home=layout.home)) as c:
        machine = protect(c, layout, ["/etc/"], repository=tmp_path / "repo", password_file=password)
        assert machine.root == layout.root and machine.info()["tags"] == {"cloudkeep-host": "this-host"}
        repository = c.get_repository("this-host-repository")
        assert repository.location == str((tmp_path / "repo").resolve()) and repository.has_password
        assert c.get_job(JOB).includes == ["/etc"]

        protect(c, layout, ["/home", "/etc"])
        assert c.get_job(JOB).includes == ["/etc", "/home"]
        assert len(c.list_credentials().items) == 1 and len(c.list_repositories().items) == 2
        assert host_machine(layout).path == machine.path  # the same lab entry

        with pytest.raises(HostError, match="already backed up to"):
            protect(c, layout, ["/etc"], repository=tmp_path / "elsewhere")
        with pytest.raises(HostError, match="already protects a host with root"):
            protect(c, HostLayout(layout.home, tmp_path / "other-root"), ["/etc"])
        with pytest.raises(ConfigurationError, match="not an absolute path"):
            protect(c, layout, ["etc"])


def test_a_missing_path_is_named_and_the_rest_backed_up(tmp_path: Path) -> None:
    """issue 16: `--path /srv` that does not exist ends the backup 'warning' (exit 3), naming it."""
    home, root = tmp_path / "home", tmp_path / "root"
    _seed(root)
    try:
        protect = _run(home, "host", "protect", "--path", "/etc", "--path", "/nope", "--root", str(root))
        assert protect.returncode == 3, protect.stdout + protect.stderr
        assert "/nope" in protect.stdout and "does not exist" in protect.stdout
        assert "this host is protected" in protect.stdout
        status = _run(home, "host", "status", "--json")
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        assert shown["job"]["includes"] == ["/etc", "/nope"] and len(shown["restore_points"]) == 1
        assert shown["restore_points"][0]["files"] >= 2  # /etc was backed up all the same
        again = _run(home, "host", "backup", "--json")
        assert again.returncode == 3, again.stdout + again.stderr
        session = json.loads(again.stdout)  # one JSON document, no progress around it
        assert session["state"] == "warning" and "/nope" in session["tasks"][0]["reason"]
    finally:
        unprotect = _run(home, "host", "unprotect", "--json")
    assert unprotect.returncode == 0 and json.loads(unprotect.stdout)["ok"] is True


def test_a_home_that_is_not_ours_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After `sudo cloudkeep host protect`, the user's own `host status` finds the same home but
    cannot open root's state: it says so. Tests run as root, who may open anything, so the
    permission answer is a stand-in (os.access patched), in-process."""
    from typer.testing import CliRunner

    from cloudkeep.cli import host
    from cloudkeep.cli.main import app

    home = tmp_path / "home"
    home.mkdir()
    (home / "cloudkeep.db").write_bytes(b"")
    monkeypatch.setattr(host.os, "access", lambda path, mode: False)
    result = CliRunner().invoke(
        app, ["host", "status"], env={"CLOUDKEEP_HOME": str(home), "CLOUDKEEP_DATABASE_URL": ""}
    )  # the home by environment: --home's own check (click's Path) would ask os.access too
    assert result.exit_code == 2, result.output
    assert "belongs to another user" in result.output and "sudo" in result.output
