"""Which machine-side services are alive: each daemon touches a beacon file every few seconds.

The message service reports these in heartbeats and ``ping`` results; ``status`` prints them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from cloudkeep.machine.spool import write_atomic

SERVICES = ("message-service", "agent", "transport")
BEACON_SECONDS = 2.0
STALE_SECONDS = 10.0


def beacon_path(state_dir: Path, service: str) -> Path:
    return state_dir / "services" / f"{service}.json"


def touch_beacon(state_dir: Path, run_dir: Path, service: str, **extra: Any) -> None:
    path = beacon_path(state_dir, service)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"pid": os.getpid(), "at": time.time(), **extra}))
    run_dir.mkdir(parents=True, exist_ok=True)
    pid_file = run_dir / f"{service}.pid"
    if not pid_file.exists() or pid_file.read_text().strip() != str(os.getpid()):
        write_atomic(pid_file, str(os.getpid()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def service_status(state_dir: Path) -> dict[str, dict[str, Any]]:
    status: dict[str, dict[str, Any]] = {}
    for service in SERVICES:
        try:
            data = json.loads(beacon_path(state_dir, service).read_text())
        except (OSError, ValueError):
            status[service] = {"state": "not-installed"}
            continue
        fresh = time.time() - float(data.get("at", 0)) < STALE_SECONDS and _alive(int(data.get("pid", 0)))
        status[service] = {"state": "running" if fresh else "stopped", "pid": data.get("pid")}
    return status
