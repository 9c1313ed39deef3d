"""Benchmark: the local queue's receive with many messages waiting (issue 18).

Fills one queue of the embedded SQLite queue with ``--queued`` visible messages (one
transaction), then times ``--rounds`` receives of 10, each acked, and prints p50 / p99.

    .venv/bin/python bench/queue_receive.py --queued 100000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cloudkeep.providers.local.queues import LocalQueueService  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ck-queue-") as tmp:
        service = LocalQueueService(Path(tmp) / "queues.db")
        queue = service.ensure_queue("server")
        db = service.database._connection()
        now = time.time()
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO messages (id, queue, body, sent_at, visible_at) VALUES (?, 'server', ?, ?, ?)",
            ((f"m{n}", "x" * 300, now, now) for n in range(args.queued)),
        )
        db.execute("COMMIT")
        latencies = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            got = queue.receive(max_messages=10, visibility_timeout=600)
            latencies.append((time.perf_counter() - started) * 1000)
            queue.ack_many(got)
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
        p50 = statistics.median(latencies)
        print(f"{args.queued} queued: receive of 10, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
