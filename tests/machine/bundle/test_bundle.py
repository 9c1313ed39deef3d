"""Installer bundles: build, signature and checksums, and the real ``install.sh`` run under dash.

``install.sh`` runs as a subprocess with ``CLOUDKEEP_MACHINE_ROOT`` pointing at a temporary root
(the layout a simulated machine has) and ``CLOUDKEEP_PYTHON`` = this interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from cloudkeep.errors import AuthenticationError, IntegrityError
from cloudkeep.machine.bundle import BundleManifest, build_bundle, wheel_name
from cloudkeep.machine.bundle.manifest import public_key_b64, sha256_file
from cloudkeep.machine.keys import AGENT_LEVEL
from cloudkeep.providers.local.queues import LocalQueueService
from tests.server.rescan_support import wait_for

KEY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bundle")
    build_bundle(folder, version="0.1.0", signing_key=KEY)
    return folder


def test_build_writes_a_signed_manifest_a_wheel_and_one_archive_per_platform(bundle_dir: Path) -> None:
    manifest = BundleManifest.load(bundle_dir)
    manifest.verify_signature(public_key_b64(KEY))
    manifest.verify_files(bundle_dir)
    assert set(manifest.platforms) == {"linux", "windows"}
    assert manifest.platforms["linux"].files == [wheel_name("0.1.0"), "install.sh"]
    for platform, archive in manifest.archives.items():
        assert sha256_file(bundle_dir / archive.file) == archive.sha256, platform
    with zipfile.ZipFile(bundle_dir / wheel_name("0.1.0")) as wheel:
        names = set(wheel.namelist())
        assert {
            "cloudkeep/__init__.py",
            "cloudkeep/machine/__main__.py",
            "cloudkeep/machine/bundle/install.sh",
        } <= names
        assert "Version: 0.1.0" in wheel.read("cloudkeep-0.1.0.dist-info/METADATA").decode()
        record = wheel.read("cloudkeep-0.1.0.dist-info/RECORD").decode()
        assert "cloudkeep/__init__.py,sha256=" in record
        assert not any("__pycache__" in n for n in names)


def test_wheel_is_reproducible(tmp_path: Path, bundle_dir: Path) -> None:
    again = build_bundle(tmp_path, version="0.1.0", signing_key=KEY)
    assert again.files[wheel_name("0.1.0")].sha256 == sha256_file(bundle_dir / wheel_name("0.1.0"))


def test_tampering_and_a_foreign_key_are_detected(tmp_path: Path) -> None:
    manifest = build_bundle(tmp_path, version="0.1.0", signing_key=KEY)
    with pytest.raises(AuthenticationError, match="signature is invalid"):
        manifest.verify_signature(public_key_b64(Ed25519PrivateKey.generate()))
    wheel = tmp_path / wheel_name("0.1.0")
    data = bytearray(wheel.read_bytes())
    data[100] ^= 1
    wheel.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        manifest.verify_files(tmp_path)
    manifest.version = "9.9.9"
    with pytest.raises(AuthenticationError):
        manifest.verify_signature(public_key_b64(KEY))


def test_verify_module_exit_codes(tmp_path: Path, bundle_dir: Path) -> None:
    def verify(folder: Path, key: Ed25519PrivateKey) -> subprocess.CompletedProcess[str]:
        args = [
            sys.executable,
            "-m",
            "cloudkeep.machine.bundle.verify",
            str(folder),
            "--public-key",
            public_key_b64(key),
        ]
        return subprocess.run(args, capture_output=True, text=True, timeout=60)

    assert verify(bundle_dir, KEY).returncode == 0
    bad = verify(bundle_dir, Ed25519PrivateKey.generate())
    assert bad.returncode == 4 and "CLOUDKEEP-ERROR" in bad.stdout


# --- install.sh ---------------------------------------------------------------------------------


def _config(tmp_path: Path, key: Ed25519PrivateKey = KEY) -> Path:
    queues = LocalQueueService(tmp_path / "queues.sqlite3")
    for name in ("server", "agent"):
        queues.ensure_queue(name)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "machine_id": "m1", "cloud_id": "m1", "server_id": "ck-test",
        "server_public_key": public_key_b64(key),
        "agent_queue": queues.connection_info("agent"), "server_queue": queues.connection_info("server"),
        "heartbeat_seconds": 30,
    }))  # fmt: skip
    return path


def _install(root: Path, bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLOUDKEEP_MACHINE_ROOT": str(root), "CLOUDKEEP_PYTHON": sys.executable}
    return subprocess.run(
        ["sh", str(bundle / "install.sh"), *args], capture_output=True, text=True, env=env, timeout=120
    )


def _lines(stdout: str, prefix: str) -> list[str]:
    return [line.removeprefix(prefix).strip() for line in stdout.splitlines() if line.startswith(prefix)]


def test_install_sh_verifies_installs_and_is_idempotent(tmp_path: Path, bundle_dir: Path) -> None:
    root, config = tmp_path / "root", _config(tmp_path)

    first = _install(root, bundle_dir, "--config", str(config), "--no-start")

    assert first.returncode == 0, first.stdout + first.stderr
    assert _lines(first.stdout, "CLOUDKEEP-INSTALLED") == ["version=0.1.0 changed=yes services=not-started"]
    keys = json.loads(_lines(first.stdout, "CLOUDKEEP-KEYS")[0])
    assert set(keys) == {"signing_public_key", "encryption_public_key", "agent_level"}
    assert keys["agent_level"] == AGENT_LEVEL  # the server refuses commands an older agent cannot run
    assert (root / "opt/cloudkeep/VERSION").read_text().strip() == "0.1.0"
    assert (root / "opt/cloudkeep/lib/cloudkeep/machine/__main__.py").is_file()
    assert os.access(root / "opt/cloudkeep/bin/cloudkeep-machine", os.X_OK)
    assert (root / "etc/cloudkeep/machine.json").stat().st_mode & 0o777 == 0o600
    assert (root / "opt/cloudkeep/install.sh").is_file() and (root / "opt/cloudkeep/.restart-needed").exists()

    second = _install(root, bundle_dir, "--config", str(config), "--no-start")

    assert second.returncode == 0, second.stderr
    assert _lines(second.stdout, "CLOUDKEEP-INSTALLED") == ["version=0.1.0 changed=no services=not-started"]
    assert json.loads(_lines(second.stdout, "CLOUDKEEP-KEYS")[0]) == keys


def test_install_sh_refuses_a_tampered_file_or_a_foreign_signature(tmp_path: Path, bundle_dir: Path) -> None:
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for item in bundle_dir.iterdir():
        (tampered / item.name).write_bytes(item.read_bytes())
    wheel = tampered / wheel_name("0.1.0")
    data = bytearray(wheel.read_bytes())
    data[-200] ^= 0xFF
    wheel.write_bytes(bytes(data))
    root = tmp_path / "root"

    result = _install(root, tampered, "--config", str(_config(tmp_path)))
    assert result.returncode == 4
    assert (
        "checksum mismatch for cloudkeep-0.1.0-py3-none-any.whl"
        in _lines(result.stdout, "CLOUDKEEP-ERROR")[0]
    )
    assert not (root / "opt/cloudkeep/VERSION").exists()  # nothing installed before verification

    foreign = _install(root, bundle_dir, "--config", str(_config(tmp_path, Ed25519PrivateKey.generate())))
    assert foreign.returncode == 4
    assert "signature is invalid" in _lines(foreign.stdout, "CLOUDKEEP-ERROR")[0]
    assert not (root / "opt/cloudkeep/VERSION").exists()


def test_install_sh_starts_stops_and_upgrades_in_place(tmp_path: Path, bundle_dir: Path) -> None:
    root, config = tmp_path / "root", _config(tmp_path)
    run = root / "var/run/cloudkeep"
    assert _install(root, bundle_dir, "--config", str(config), "--no-start").returncode == 0
    try:
        started = _install(root, root / "opt/cloudkeep", "--start")
        assert started.returncode == 0, started.stdout + started.stderr
        assert _lines(started.stdout, "CLOUDKEEP-STARTED") == ["services=fallback message-service=yes"]
        again = _install(root, root / "opt/cloudkeep", "--start")  # all running: starts nothing
        assert _lines(again.stdout, "CLOUDKEEP-STARTED") == ["services=fallback message-service=no"]
        pids = {
            svc: int((run / f"cloudkeep-{svc}.pid").read_text()) for svc in ("message", "agent", "transport")
        }
        for pid in pids.values():
            os.kill(pid, 0)  # running

        v2 = tmp_path / "v2"
        build_bundle(v2, version="0.2.0", signing_key=KEY)
        upgraded = _install(root, v2, "--config", str(config))
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        assert _lines(upgraded.stdout, "CLOUDKEEP-INSTALLED") == [
            "version=0.2.0 changed=yes services=fallback"
        ]
        assert (root / "opt/cloudkeep/VERSION").read_text().strip() == "0.2.0"
        new_pid = int((run / "cloudkeep-message.pid").read_text())
        assert new_pid != pids["message"]
        wait_for(lambda: not _alive(pids["message"]), what="the old message service to stop")
    finally:
        stopped = _install(root, root / "opt/cloudkeep", "--stop")
    assert _lines(stopped.stdout, "CLOUDKEEP-STOPPED") == [""]
    assert not list(run.glob("cloudkeep-*.pid"))
    wait_for(lambda: not _alive(new_pid), what="the message service to stop")
    # Each line once: the services log to stderr, which the fallback sends to <service>.log only.
    logs = root / "var/log/cloudkeep"
    written = sorted(p.name for p in logs.glob("*.log"))
    assert written == ["agent.log", "install.log", "message.log", "transport.log"]
    assert "message service" in (logs / "message.log").read_text().lower()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("service", ["message", "agent", "transport"])
def test_systemd_units_pass_systemd_analyze_verify(service: str, tmp_path: Path, bundle_dir: Path) -> None:
    root = tmp_path / "root"
    binary = root / "opt/cloudkeep/bin/cloudkeep-machine"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    printed = _install(root, bundle_dir, "--unit", service)
    assert printed.returncode == 0, printed.stderr
    unit = tmp_path / f"cloudkeep-{service}.service"
    unit.write_text(printed.stdout)
    assert "Restart=on-failure" in printed.stdout and "StandardOutput=journal" in printed.stdout
    assert f"ExecStart={binary} " in printed.stdout

    def verify() -> subprocess.CompletedProcess[str]:
        command = ["systemd-analyze", "verify", str(unit)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    checked = verify()
    assert checked.returncode == 0, checked.stderr
    binary.unlink()  # the check is real: a unit whose program is missing fails it
    assert verify().returncode != 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cli_bundle_build_and_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudkeep.cli.bundle import app

    monkeypatch.setenv("CLOUDKEEP_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    built = runner.invoke(app, ["build", "--no-wheels", "--out", str(tmp_path / "out")])
    assert built.exit_code == 0, built.output
    assert "cloudkeep-0.1.0-linux.tar.gz" in built.output
    shown = runner.invoke(app, ["show", str(tmp_path / "out")])
    assert shown.exit_code == 0, shown.output
    assert "signature and checksums OK" in shown.output
    (tmp_path / "out" / "install.sh").write_text("echo tampered\n")
    assert "NOT VALID" in runner.invoke(app, ["show", str(tmp_path / "out")]).output


def _shell_scripts() -> dict[str, str]:
    from cloudkeep.machine.bundle.builder import installer_text
    from cloudkeep.server.rescan import scripts

    bootstrap = scripts.linux_bootstrap(
        version="0.1.0", url="http://h/o?a=1&sig=it's", sha256="ab", config={}
    )
    return {
        "install.sh": installer_text("linux").decode(),
        "bootstrap": bootstrap,
        "probe": scripts.LINUX_PROBE,
        "start": scripts.LINUX_START,
        "services-check": scripts.services_check_script(),
    }


@pytest.mark.parametrize("name", list(_shell_scripts()))
def test_shell_scripts_parse_under_dash(name: str, tmp_path: Path) -> None:
    path = tmp_path / "script.sh"
    path.write_text(_shell_scripts()[name])
    checked = subprocess.run(["dash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("name", list(_shell_scripts()))
def test_shell_scripts_pass_shellcheck_as_posix_sh(name: str, tmp_path: Path) -> None:
    path = tmp_path / "script.sh"
    path.write_text(_shell_scripts()[name])
    checked = subprocess.run(
        ["shellcheck", "-s", "sh", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout
