"""``cloudkeep server start`` as a real subprocess, started once the way every CLI test needs it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

CLOUDKEEP = Path(sys.executable).with_name("cloudkeep")


def start_server(
    port: int, env: dict[str, str], *extra: str, scheme: str = "http", verify: Any = True
) -> tuple[subprocess.Popen[str], httpx.Response]:
    """Start the server on ``port`` and poll ``/healthz`` (deadline 60 s); the caller terminates it."""
    server = subprocess.Popen(
        [str(CLOUDKEEP), "server", "start", "--port", str(port), "--no-background", *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while True:
        if server.poll() is not None:
            raise AssertionError(server.stderr.read() if server.stderr else "server exited")
        try:
            return server, httpx.get(f"{scheme}://127.0.0.1:{port}/healthz", verify=verify, timeout=1)
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.terminate()
            raise AssertionError("cloudkeep server start did not answer")
        time.sleep(0.1)
