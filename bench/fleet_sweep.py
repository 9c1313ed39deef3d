"""Benchmark: one round of the fleet simulator's receive over many idle agent queues (issue 18).

``--queues`` agent queues in one local SQLite queue file, ``--busy`` of them holding a command,
and a server queue with ``--backlog`` reports waiting (as during a daily job). Times, per round:
a receive from every agent queue (the simulator before wave 6) against one ``ready_queue_names``
read and a receive from only the queues it names (after). Nothing is acked and nothing is hidden
(visibility 0, no dead-lettering): every round sees the same state.

    .venv/bin/python bench/fleet_sweep.py --queues 5000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.support.fleet import ready_queue_names  # noqa: E402

from cloudkeep.providers.local.queues import LocalQueue, LocalQueueService  # noqa: E402


def _round_all(queues: list[LocalQueue]) -> int:
    return sum(len(q.receive(max_messages=10, visibility_timeout=0)) for q in queues)


def _round_ready(service: LocalQueueService, queues: list[LocalQueue]) -> int:
    names = ready_queue_names(service)
    return sum(len(q.receive(max_messages=10, visibility_timeout=0)) for q in queues if q.name in names)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queues", type=int, default=5000, help="agent queues (a simulator process's)")
    parser.add_argument("--busy", type=int, default=16, help="agent queues holding a command")
    parser.add_argument("--backlog", type=int, default=300, help="reports waiting on the server queue")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ck-sweep-") as tmp:
        service = LocalQueueService(Path(tmp) / "queues.db")
        queues = [service.ensure_queue(f"ck-agent-{n}", max_receive_count=10**6) for n in range(args.queues)]
        server = service.ensure_queue("ck-server")
        for n in range(args.busy):
            queues[n * args.queues // args.busy].send("command")
        for _ in range(args.backlog):
            server.send("report")
        for name, run in (("every queue", lambda: _round_all(queues)),
                          ("ready queues only", lambda: _round_ready(service, queues))):  # fmt: skip
            times = []
            for _ in range(args.rounds):
                started = time.process_time()
                received = run()
                times.append(1000 * (time.process_time() - started))
            assert received == args.busy, received
            print(f"{name:18s}: {statistics.median(times):8.1f} ms CPU a round ({args.queues} queues, "
                  f"{args.busy} busy, {args.backlog} waiting on the server queue)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
