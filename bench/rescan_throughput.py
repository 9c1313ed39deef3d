"""Rescan throughput against the local provider, in machines per minute.

Two measurements per fleet size, each on a fresh server home and lab of simulated Linux machines:

* ``checks``: discovery + probe + ownership + prerequisites (``start_rescan(deploy=False)``);
* ``deploy``: the whole state machine — bundle upload, signed-URL download, verification,
  install, key registration, three services started, heartbeat and a ping through the queue.

Each deployed machine runs three Python daemons (~180 MB together), so during ``deploy`` a reaper
stops a machine's services once it is confirmed; memory then stays bounded by the concurrency.

    .venv/bin/python bench/rescan_throughput.py --checks 10,100,1000 --deploy 10,100 --concurrency 16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from cloudkeep.config import Settings
from cloudkeep.providers.local import Lab
from cloudkeep.server.context import ServerContext, open_context
from cloudkeep.server.db.models import Credential, DiscoveredMachine, JobSession, ProtectionGroup, Repository
from cloudkeep.server.dispatcher import stop_consumers
from cloudkeep.server.rescan import start_rescan


def make_world(folder: Path, machines: int, concurrency: int) -> tuple[ServerContext, Lab, str]:
    lab = Lab(folder / "lab")
    for i in range(machines):
        lab.create_machine(f"m{i:04d}", env={"CLOUDKEEP_PYTHON": sys.executable})
    ctx = open_context(Settings(home=folder / "home", rescan_concurrency=concurrency))
    with ctx.db() as session:
        credential = Credential(
            name="lab", provider="local", secret=ctx.secrets.seal({}), options={"lab_dir": str(lab.path)}
        )
        session.add(credential)
        session.flush()
        repository = Repository(
            name="dist", purpose="distribution", credential_id=credential.id, location="distribution"
        )
        session.add(repository)
        session.flush()
        group = ProtectionGroup(
            name="bench", credential_id=credential.id, distribution_repository_id=repository.id
        )
        session.add(group)
        session.flush()
        group_id = group.id
    return ctx, lab, group_id


def stop_services(root: Path) -> None:
    for pidfile in (root / "var/run/cloudkeep").glob("*.pid"):
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


class Reaper(threading.Thread):
    """Stops the services of machines that reached ``deployed`` (bounds memory during the bench)."""

    def __init__(self, ctx: ServerContext, lab: Lab) -> None:
        super().__init__(daemon=True)
        self.ctx, self.lab, self.done = ctx, lab, threading.Event()
        self.reaped: set[str] = set()

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.reap()

    def reap(self) -> None:
        with self.ctx.db() as session:
            names = [m.name for m in session.query(DiscoveredMachine).filter_by(status="deployed")]
        for name in names:
            if name not in self.reaped:
                stop_services(self.lab.machines_dir / name / "root")
                self.reaped.add(name)


def measure(machines: int, *, deploy: bool, concurrency: int) -> dict[str, float | int | str]:
    folder = Path(tempfile.mkdtemp(prefix=f"ck-bench-rescan-{machines}-"))
    ctx, lab, group_id = make_world(folder, machines, concurrency)
    reaper = Reaper(ctx, lab)
    if deploy:
        reaper.start()
    try:
        started = time.perf_counter()
        session_id = start_rescan(ctx, group_id, deploy=deploy, wait=True)
        elapsed = time.perf_counter() - started
        with ctx.db() as session:
            row = session.get(JobSession, session_id)
            assert row is not None
            stats, state = dict(row.stats), row.state
    finally:
        reaper.done.set()
        reaper.reap()
        for simulated in lab.list():
            stop_services(simulated.root)
        stop_consumers()
        ctx.close()
        shutil.rmtree(folder, ignore_errors=True)
    good = stats.get("deployed" if deploy else "ready", 0)
    return {
        "mode": "deploy" if deploy else "checks",
        "machines": machines,
        "ok": good,
        "state": state,
        "seconds": round(elapsed, 2),
        "per_minute": round(machines / elapsed * 60, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checks", default="10,100,1000", help="fleet sizes for discovery + checks")
    parser.add_argument("--deploy", default="10,100", help="fleet sizes for full deployment ('' for none)")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    sizes = [(int(n), False) for n in args.checks.split(",") if n] + [
        (int(n), True) for n in args.deploy.split(",") if n
    ]
    print(f"rescan throughput, local provider, concurrency {args.concurrency}, {os.cpu_count()} CPUs")
    print(f"{'mode':8} {'machines':>8} {'ok':>6} {'state':>8} {'seconds':>9} {'machines/min':>13}")
    for machines, deploy in sizes:
        r = measure(machines, deploy=deploy, concurrency=args.concurrency)
        print(
            f"{r['mode']:8} {r['machines']:>8} {r['ok']:>6} {r['state']:>8} "
            f"{r['seconds']:>9} {r['per_minute']:>13}"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
