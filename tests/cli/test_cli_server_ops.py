"""`cloudkeep server start` over HTTPS with JSON logs, and `server install-service`, through the real CLI."""

from __future__ import annotations

import json
import os
import ssl
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cloudkeep.cli.main import app
from cloudkeep.config import Settings
from tests.cli.server_process import start_server
from tests.support.peers import free_port
from tests.support.tls import TlsFiles

CLOUDKEEP = Path(sys.executable).with_name("cloudkeep")


def _env(settings: Settings) -> dict[str, str]:
    env = {**os.environ, "CLOUDKEEP_HOME": str(settings.home), "COLUMNS": "200"}  # messages unwrapped
    env["CLOUDKEEP_DATABASE_URL"] = settings.effective_database_url
    env.pop("CLOUDKEEP_API_URL", None)
    return env


@pytest.mark.slow
def test_server_start_serves_https_and_logs_json(settings: Settings, tls_files: TlsFiles) -> None:
    port = free_port()
    trust = ssl.create_default_context(cafile=str(tls_files.cert))
    server, answer = start_server(
        port,
        {**_env(settings), "CLOUDKEEP_LOG_LEVEL": "debug"},
        "--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key), "--log-format", "json",
        scheme="https",
        verify=trust,
    )  # fmt: skip
    try:
        assert answer.status_code == 200 and answer.json()["status"] == "ok"
        with pytest.raises(httpx.TransportError):  # plain HTTP is not served on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).raise_for_status()
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[0].startswith(f"cloudkeep API on https://127.0.0.1:{port}/api/v1")
    records = [json.loads(line) for line in lines[1:]]  # every log line is one JSON object
    assert all({"ts", "level", "logger", "event"} <= set(r) for r in records)
    assert any(r["logger"] == "uvicorn.access" and "GET /healthz" in r["event"] for r in records)
    started = [r for r in records if r["event"] == "Application startup complete."]
    assert started and started[0]["logger"] == "uvicorn.error" and started[0]["level"] == "info"


def test_server_start_refuses_bad_operator_flags(settings: Settings, tmp_path: Path) -> None:
    runner = CliRunner()
    env = _env(settings)
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    cases = [
        (["--log-level", "loud"], "unknown log level 'loud'"),
        (["--log-format", "xml"], "unknown log format 'xml'"),
        (["--tls-cert", str(cert)], "--tls-cert and --tls-key go together"),
        (["--tls-cert", str(cert), "--tls-key", str(tmp_path / "nope.pem")], "is not a readable file"),
    ]
    for flags, message in cases:
        result = runner.invoke(app, ["server", "start", *flags], env=env)
        assert result.exit_code == 2, (flags, result.output)  # usage / bad input
        assert message in result.output, (flags, result.output)
        assert "Traceback" not in result.output


def test_install_service_dry_run_and_write(settings: Settings, tmp_path: Path) -> None:
    runner = CliRunner()
    env = _env(settings)
    shown = runner.invoke(
        app, ["server", "install-service", "--dry-run", "--user", "backup", "--log-level", "warning"], env=env
    )
    assert shown.exit_code == 0, shown.output
    assert "Restart=on-failure" in shown.output and "User=backup" in shown.output
    assert f"CLOUDKEEP_HOME={settings.home.resolve()}" in shown.output
    assert "--log-level warning" in shown.output
    unit = tmp_path / "units" / "cloudkeep-server.service"
    written = runner.invoke(app, ["server", "install-service", "--unit-path", str(unit)], env=env)
    assert written.exit_code == 0, written.output
    assert unit.read_text() == runner.invoke(app, ["server", "install-service", "--dry-run"], env=env).output
    assert "systemctl enable --now cloudkeep-server.service" in written.output
