"""Idle machine services stay light: the three processes together under the issue's 100 MB.

The services run as install.sh starts them (fallback mode, ``CLOUDKEEP_PYTHON`` = this venv), on
local queues and on SQS (moto server): with keys in the machine config, and with none, so the keys
come through botocore's default chain (here the environment; on EC2 the instance role), which
loads botocore's session too. RSS is read from /proc of each service process itself (Linux keeps a
parent's peak RSS across exec, so nothing is measured from a big parent). The first heartbeat must
have reached the server queue: a service that cannot talk to its queue would look light too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloudkeep.machine.bundle import build_bundle
from cloudkeep.machine.bundle.manifest import public_key_b64
from cloudkeep.providers import QueueService, get_provider
from cloudkeep.providers.local.queues import LocalQueueService
from tests.server.rescan_support import wait_for
from tests.support.peers import MotoServer

KEY = Ed25519PrivateKey.generate()
SERVICES = ("message", "agent", "transport")
# The bound. Measured 2026-12-02 (CPython 3.11): local 84.5 MB (message 35.2, agent 24.7,
# transport 24.6; was 94.8, ~153 before), SQS with configured keys 90.2 (message 41.0; was 122.6 with
# a boto3 client), SQS with the default credential chain 94.4 (message 45.1).
TOTAL_LIMIT_MB = 100
WORKER_LIMIT_MB = 35  # an idle agent / transport loads neither pydantic nor the engine (~24 MB)
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _uses_pydantic(pid: int) -> bool:
    return "pydantic_core" in Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture(
    params=[
        "local",
        pytest.param("aws", marks=pytest.mark.moto),
        pytest.param("aws-chain", marks=pytest.mark.moto),
    ]
)
def cloud(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def queues(cloud: str, request: pytest.FixtureRequest, tmp_path: Path) -> QueueService:
    if cloud == "local":
        return LocalQueueService(tmp_path / "queues.sqlite3")
    moto: MotoServer = request.getfixturevalue("moto_server")
    options: dict[str, object] = {"endpoint_url": moto.endpoint, "region": "us-east-1"}
    if cloud == "aws":
        options["machine_credentials"] = KEYS
    return get_provider("aws", KEYS, options).queues


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One bundle for every case: what differs between them is the queue, not the install."""
    folder = tmp_path_factory.mktemp("light") / "bundle"
    build_bundle(folder, version="0.1.0", signing_key=KEY)
    return folder


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_idle_services_rss_is_small(tmp_path: Path, cloud: str, queues: QueueService, bundle: Path) -> None:
    suffix = f"-{time.monotonic_ns()}"  # moto is shared by the session
    for name in ("server", "agent"):
        queues.ensure_queue(name + suffix)
    config = tmp_path / "machine.json"
    config.write_text(json.dumps({
        "machine_id": "m1", "server_id": "s1", "server_public_key": public_key_b64(KEY),
        "agent_queue": queues.connection_info("agent" + suffix),
        "server_queue": queues.connection_info("server" + suffix, access="send"),
        "heartbeat_seconds": 30,
    }))  # fmt: skip
    root = tmp_path / "root"
    env = {**os.environ, "CLOUDKEEP_MACHINE_ROOT": str(root), "CLOUDKEEP_PYTHON": sys.executable}
    if cloud == "aws-chain":  # no keys in the config: botocore's chain finds these
        env.update({k.upper(): v for k, v in KEYS.items()})
    installer = ["sh", str(bundle / "install.sh")]
    started = subprocess.run([*installer, "--config", str(config)], capture_output=True, text=True, env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        logs = root / "var/log/cloudkeep"
        for service in SERVICES:
            wait_for(
                lambda s=service: "started" in (logs / f"{s}.log").read_text(),  # type: ignore[misc]
                what=f"the {service} service to start",
            )
        pids = {s: int((root / f"var/run/cloudkeep/cloudkeep-{s}.pid").read_text()) for s in SERVICES}
        peak = dict.fromkeys(SERVICES, 0.0)
        end = time.monotonic() + 5  # sample while idle: heartbeats and polls run meanwhile
        while time.monotonic() < end:
            for service, pid in pids.items():
                peak[service] = max(peak[service], _rss_mb(pid))
            time.sleep(0.25)
        pydantic_loaded = {s: _uses_pydantic(pid) for s, pid in pids.items()}
    finally:
        subprocess.run([*installer, "--stop"], capture_output=True, env=env, timeout=60)
    total = round(sum(peak.values()), 1)
    print(f"idle RSS on {cloud} (MB):", {s: round(v, 1) for s, v in peak.items()}, "total", total)
    assert peak["agent"] <= WORKER_LIMIT_MB and peak["transport"] <= WORKER_LIMIT_MB, peak
    assert total <= TOTAL_LIMIT_MB, peak
    # pydantic comes with the first message (validation), not before: idle, nobody holds it.
    assert pydantic_loaded == dict.fromkeys(SERVICES, False)
    beats = queues.get_queue("server" + suffix).receive(max_messages=10, wait_seconds=5)
    assert beats and all(json.loads(b.body)["kind"] == "heartbeat" for b in beats)
