"""The systemd unit that keeps ``cloudkeep server start`` running, so scheduled runs survive a reboot.

The unit's text is built from explicit values (no environment read here); ``cloudkeep server
install-service`` writes it and, with ``--enable``, asks systemd to start it at boot.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

DEFAULT_UNIT_NAME = "cloudkeep-server.service"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")


@dataclass(frozen=True)
class ServiceSpec:
    """What the unit runs and as whom."""

    executable: Path  # the `cloudkeep` console script of the installation to run
    home: Path
    user: str
    host: str = "127.0.0.1"
    port: int = 8750
    workers: int = 1
    log_level: str = "INFO"
    log_format: str = "text"
    database_url: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None


def _env_line(name: str, value: str) -> str:
    # systemd's Environment= takes "NAME=value" in double quotes; backslash and quote are escaped
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'Environment="{name}={escaped}"'


def unit_text(spec: ServiceSpec) -> str:
    """The unit file: restarts on failure, logs to the journal, runs as ``spec.user``."""
    command = [
        str(spec.executable), "server", "start",
        "--host", spec.host, "--port", str(spec.port), "--workers", str(spec.workers),
        "--log-level", spec.log_level.lower(), "--log-format", spec.log_format,
    ]  # fmt: skip
    if spec.tls_cert and spec.tls_key:
        command += ["--tls-cert", str(spec.tls_cert), "--tls-key", str(spec.tls_key)]
    environment = [_env_line("CLOUDKEEP_HOME", str(spec.home))]
    if spec.database_url:
        environment.append(_env_line("CLOUDKEEP_DATABASE_URL", spec.database_url))
    lines = [
        "[Unit]",
        "Description=cloudkeep backup server (API, scheduler, queue consumers)",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"User={spec.user}",
        *environment,
        f"WorkingDirectory={spec.home}",
        f"ExecStart={shlex.join(command)}",
        "Restart=on-failure",
        "RestartSec=5",
        # the server logs one line per event on stderr: the journal keeps them (journalctl -u …)
        "StandardOutput=journal",
        "StandardError=journal",
        "SyslogIdentifier=cloudkeep",
        "NoNewPrivileges=true",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)
