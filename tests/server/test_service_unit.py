"""The systemd unit `cloudkeep server install-service` writes."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from cloudkeep.server.service_unit import ServiceSpec, unit_text


def _spec(tmp_path: Path, **overrides: object) -> ServiceSpec:
    executable = tmp_path / "bin" / "cloudkeep"
    executable.parent.mkdir(exist_ok=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    values: dict[str, object] = {
        "executable": executable, "home": tmp_path / "home dir", "user": "backup", "log_level": "DEBUG",
    }  # fmt: skip
    values.update(overrides)
    return ServiceSpec(**values)  # type: ignore[arg-type]


def test_unit_restarts_on_failure_and_logs_to_the_journal(tmp_path: Path) -> None:
    text = unit_text(_spec(tmp_path, database_url='postgresql://u:p@db/ck?x="1"', port=9000))
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text)
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert service["User"] == "backup"
    assert service["StandardError"] == "journal"
    assert f"{tmp_path}/bin/cloudkeep server start" in service["ExecStart"]
    assert "--log-level debug" in service["ExecStart"] and "--port 9000" in service["ExecStart"]
    assert f"CLOUDKEEP_HOME={tmp_path}/home dir" in text
    assert r"ck?x=\"1\"" in text  # quotes inside Environment= are escaped
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "--tls-cert" not in text
    with_tls = unit_text(_spec(tmp_path, tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem"))
    assert f"--tls-cert {tmp_path}/c.pem --tls-key {tmp_path}/k.pem" in with_tls


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    spec = _spec(tmp_path, user="root", home=tmp_path)
    path = tmp_path / "cloudkeep-server.service"
    path.write_text(unit_text(spec))
    done = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "cloudkeep-server.service" not in done.stderr, done.stderr  # no warnings about our unit
