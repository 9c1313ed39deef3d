"""Time ``/metrics`` renders for a large fleet on PostgreSQL (the test peer).

The machines table holds ``--machines`` deployed machines, ``--late`` of them past the heartbeat
limit and the others with fresh heartbeats (0-35 s old); one registry is rendered ``--rounds``
times, as a server renders it for successive scrapes. To compare two versions, run this file with
each version's code first on the path::

    PYTHONPATH=<archive>/src:<archive> .venv/bin/python bench/metrics_render.py --label main
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # appended: a PYTHONPATH given for another version comes first
sys.path.append(str(ROOT / "src"))

from sqlalchemy import insert, select  # noqa: E402
from tests.server.fixtures import seed  # noqa: E402
from tests.server.jobs_fakes import fresh_postgres_url  # noqa: E402
from tests.support.peers import Postgres  # noqa: E402

from cloudkeep.config import Settings  # noqa: E402
from cloudkeep.server import metrics  # noqa: E402
from cloudkeep.server.context import open_context  # noqa: E402
from cloudkeep.server.db.models import DiscoveredMachine, ProtectionGroup  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=20_000)
    parser.add_argument("--late", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--label", default="this code")
    args = parser.parse_args()
    pg = Postgres.start()
    try:
        home = Path(tempfile.mkdtemp(prefix="ck-metrics-render-"))
        ctx = open_context(Settings(home=home, database_url=fresh_postgres_url(pg)))
        group_name = seed(ctx, home / "lab").group
        now = datetime.now(UTC)
        fresh = [float(i % 36) for i in range(args.machines - args.late)]
        ages = fresh + [120.0 + i for i in range(args.late)]
        with ctx.db() as db:
            group = db.scalar(select(ProtectionGroup.id).where(ProtectionGroup.name == group_name))
            rows = [
                {"protection_group_id": group, "cloud_id": f"i-{i}", "name": f"m{i:05d}", "platform": "linux",
                 "status": "deployed", "last_heartbeat_at": now - timedelta(seconds=age)}
                for i, age in enumerate(ages)
            ]  # fmt: skip
            db.execute(insert(DiscoveredMachine), rows)
        registry = metrics.build_registry(ctx)
        walls, cpus, size = [], [], 0
        for _ in range(args.rounds):
            cpu, wall = time.process_time(), time.perf_counter()
            size = len(metrics.render(registry))
            walls.append((time.perf_counter() - wall) * 1000)
            cpus.append((time.process_time() - cpu) * 1000)
        print(
            f"{args.label}: {len(ages)} machines ({args.late} late), {args.rounds} renders: wall median "
            f"{statistics.median(walls):.0f} ms (min {min(walls):.0f}, max {max(walls):.0f}); CPU median "
            f"{statistics.median(cpus):.0f} ms; size {size / 1024:.1f} KiB"
        )
        ctx.close()
    finally:
        pg.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
