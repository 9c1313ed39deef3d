"""Benchmark: the message path between the server and machines.

1. Round-trip latency of a no-op command (``ping``) p50/p99, server → machine → server, through a
   real message-service subprocess, once on the local (SQLite) queue and once on SQS served by a
   moto server this script starts (loopback only).
2. Server-queue throughput: N simulated agents (default 1000) each post a heartbeat, two progress
   messages and a result to the one server queue; consumers verify each machine's signature and
   apply it (results at most once) into the state store. Reported as messages per second.

    python bench/queue_latency.py                  # defaults: 50 pings, 1000 agents (50 on moto)
    python bench/queue_latency.py --pings 20 --agents 200
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.machine.harness import Harness, wait_for  # noqa: E402
from tests.support.peers import MotoServer  # noqa: E402

from cloudkeep.machine.config import MachineConfig  # noqa: E402
from cloudkeep.machine.handlers import progress_body, sign_report, sign_result  # noqa: E402
from cloudkeep.machine.keys import AgentKeys  # noqa: E402
from cloudkeep.protocol.bodies import Heartbeat  # noqa: E402
from cloudkeep.server.consumer import ServerQueueConsumer  # noqa: E402
from cloudkeep.server.db.models import CommandRecord, DiscoveredMachine  # noqa: E402
from cloudkeep.server.dispatcher import Dispatcher, ensure_consumers, stop_consumers  # noqa: E402

KEYS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def round_trips(harness: Harness, pings: int) -> list[float]:
    machine = harness.add_machine(f"bench{int(time.time() * 1000) % 100000}")
    ensure_consumers(harness.ctx, workers=2)
    machine.start()
    wait_for(lambda: harness.heartbeat_age(machine) is not None, timeout=60, what="first heartbeat")
    dispatcher = Dispatcher(harness.ctx)
    dispatcher.call(machine.row_id, "ping", {}, timeout=60)  # warm-up
    samples = []
    for _ in range(pings):
        started = time.perf_counter()
        dispatcher.call(machine.row_id, "ping", {}, timeout=60)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def throughput(harness: Harness, agents: int, workers: int) -> tuple[int, float]:
    """Enqueue 4 messages per simulated agent, then time the consumers draining and applying them."""
    base = MachineConfig(machine_id="x", server_id=harness.ctx.server_id, server_public_key="",
                         agent_queue={}, server_queue={})  # fmt: skip
    messages: list[str] = []
    with harness.ctx.db() as session:
        for n in range(agents):
            keys = AgentKeys.generate()
            row = DiscoveredMachine(
                protection_group_id=harness.group_id,
                cloud_id=f"sim-{n}",
                name=f"sim-{n}",
                platform="linux",
                status="deployed",
                agent_public_key=_json(keys.public()),
            )
            session.add(row)
            session.flush()
            command_id = f"{n:032x}"
            session.add(CommandRecord(id=command_id, machine_id=row.id, kind="backup", channel="queue"))
            config = dataclasses.replace(base, machine_id=row.id)
            beat = Heartbeat(services={}, version="bench").model_dump(mode="json")
            messages.append(sign_report(config, keys, "heartbeat", beat, correlation_id=None))
            for done in (1, 2):
                body = progress_body(
                    command_id, {"bytes_read": done * 1000, "bytes_total": 3000, "files": done}
                )
                messages.append(sign_report(config, keys, "progress", body, correlation_id=command_id))
            messages.append(sign_result(config, keys, {"command_id": command_id, "ok": True, "payload": {}}))
    queue = harness.server_queue()
    for text in messages:
        queue.send(text)
    consumer = ServerQueueConsumer(harness.ctx, queue, workers=workers, wait_seconds=0.2)
    started = time.perf_counter()
    consumer.start()
    wait_for(lambda: sum(consumer.counts.values()) >= len(messages), timeout=1800, poll=0.05, what="drain")
    elapsed = time.perf_counter() - started
    consumer.stop()
    with harness.ctx.db() as session:
        from sqlalchemy import func, select

        applied = session.scalar(
            select(func.count()).where(CommandRecord.state == "done", CommandRecord.kind == "backup")
        )
    assert applied == agents, f"{applied} of {agents} results applied"
    return len(messages), elapsed


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


class _Table(list[tuple[str, str]]):
    """Prints each row as it is measured (a long run still shows what it has)."""

    def append(self, row: tuple[str, str]) -> None:
        if not self:
            print(f"{'measure':<72}  value", flush=True)
            print(f"{'-' * 72}  {'-' * 24}", flush=True)
        super().append(row)
        print(f"{row[0]:<72}  {row[1]}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pings", type=int, default=50)
    parser.add_argument("--agents", type=int, default=1000, help="simulated agents on the local queue")
    parser.add_argument("--sqs-agents", type=int, default=50, help="agents on SQS (moto scans its queue)")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    rows = _Table()
    moto = MotoServer.start()
    try:
        with tempfile.TemporaryDirectory(prefix="ck-bench-") as tmp:
            setups = {
                "local": lambda p: Harness.create(p),
                "sqs (moto)": lambda p: Harness.create(
                    p,
                    provider_kind="aws",
                    secret=KEYS,
                    heartbeat_timeout=120,
                    options={
                        "endpoint_url": moto.endpoint,
                        "region": "us-east-1",
                        "machine_credentials": KEYS,
                    },
                ),
            }
            for name, make in setups.items():
                harness = make(Path(tmp) / name.split()[0])
                try:
                    samples = round_trips(harness, args.pings)
                    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
                    rows.append((f"ping round trip, {name}: p50 / p99 (ms)", f"{p50:.0f} / {p99:.0f}"))
                    rows.append((f"ping round trip, {name}: mean (ms)", f"{statistics.mean(samples):.0f}"))
                    stop_consumers()
                    agents = args.agents if name == "local" else args.sqs_agents
                    count, elapsed = throughput(harness, agents, args.workers)
                    label = f"server queue, {name}: {agents} agents, {count} msgs, {args.workers} workers"
                    rows.append((label, f"{count / elapsed:.0f} msg/s ({elapsed:.1f} s)"))
                finally:
                    harness.close()
    finally:
        moto.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
