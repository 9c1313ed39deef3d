"""Benchmark: one server's control plane under a simulated fleet (issue 18).

The server side is real — ServerContext on SQLite or PostgreSQL (``--postgres`` starts the test
peer), the provider's queues (local SQLite queue, or SQS on a moto server with ``--sqs``), the
dispatcher, the server-queue consumers, the session runner writing the catalog and planning
retention. The agents are ``tests/support/fleet.py``: N in-process agents with their own keys
that speak the signed protocol but read no files. Per fleet size it reports:

* heartbeats: one signed heartbeat per agent, time until all are applied (→ the shortest
  heartbeat interval this server sustains for that fleet);
* ``--days`` daily runs of one backup job over every machine (dispatch → results → catalog →
  retention with keep_last 1, so from day 2 each machine also gets a ``retention`` command):
  wall time, machines per second, p50 / p99 command round trip (sent → result applied, from the
  catalog), DB size and its growth per day;
* list / browse latency (machines, restore points, sessions, one session's detail) measured from
  a thread while the job runs;
* process CPU (user + system) and peak RSS — of the whole process, simulator included;
* with ``--count-sql``: SQL statements and transactions per machine during the job, the result
  wait's polling counted apart (``tests/support/sqlcount.py``).

``--sim-procs N`` runs the agents in N processes of their own and ``--server-procs M`` the
server-queue consumers in M processes (``tests/support/fleet_procs.py``); this process then keeps
the job runner and the probes, and the server's CPU is this process's plus the consumers'.

    .venv/bin/python bench/fleet.py --machines 200,1000 --days 2
    .venv/bin/python bench/fleet.py --machines 1000 --postgres --parallel 64
    .venv/bin/python bench/fleet.py --machines 100 --sqs
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy import func, select, text  # noqa: E402
from tests.server.jobs_fakes import build_world, fresh_postgres_url, make_context  # noqa: E402
from tests.support.fleet import SimulatedFleet, wait_until  # noqa: E402
from tests.support.fleet_procs import ConsumerProcs, SimulatorProcs  # noqa: E402
from tests.support.peers import MotoServer, Postgres  # noqa: E402
from tests.support.sqlcount import StatementCounter  # noqa: E402

from cloudkeep.server import metrics  # noqa: E402
from cloudkeep.server.consumer import server_queue_name  # noqa: E402
from cloudkeep.server.context import ServerContext  # noqa: E402
from cloudkeep.server.db.models import (  # noqa: E402
    CommandRecord,
    Credential,
    DiscoveredMachine,
    JobSession,
    ProtectionGroup,
    SessionTask,
)
from cloudkeep.server.dispatcher import Dispatcher, ensure_consumers, stop_consumers  # noqa: E402
from cloudkeep.server.jobs import start_job  # noqa: E402
from cloudkeep.server.services import machines, restore_points, sessions  # noqa: E402

KEYS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class ServerCpu:
    """The server's CPU: this process's, plus the consumer processes' when they run apart."""

    def __init__(self, consumers: ConsumerProcs | None) -> None:
        self.consumers = consumers

    def __call__(self) -> float:
        return cpu_seconds() + (self.consumers.usage()[0] if self.consumers is not None else 0.0)


def db_bytes(ctx: ServerContext) -> int:
    url = ctx.settings.effective_database_url
    with ctx.engine.connect() as conn:
        if url.startswith("sqlite"):
            pages = conn.execute(text("PRAGMA page_count")).scalar() or 0
            size = conn.execute(text("PRAGMA page_size")).scalar() or 0
            return int(pages) * int(size)
        return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar() or 0)


class ApiProbe:
    """Times the list / browse service calls (what the REST routes call) from a side thread."""

    def __init__(self, ctx: ServerContext, server_queue: Any = None) -> None:
        self.ctx = ctx
        self.server_queue = server_queue
        self.gauges: dict[str, list[float]] = {}  # sampled values, not latencies
        self.samples: dict[str, list[float]] = {}
        self.session_id: str | None = None
        self.registry = metrics.build_registry(ctx)  # built once, as the server's app does
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ck-bench-api", daemon=True)

    def _time(self, name: str, call: Callable[[], Any]) -> None:
        started = time.perf_counter()
        call()
        self.samples.setdefault(name, []).append((time.perf_counter() - started) * 1000)

    def _gauge(self, name: str, value: float) -> None:
        self.gauges.setdefault(name, []).append(value)

    def _sample_backlog(self) -> None:
        """How far behind the server is: messages waiting, and the oldest machine's heartbeat age."""
        if self.server_queue is not None:
            self._gauge("server queue depth", self.server_queue.approximate_count())
        with self.ctx.db() as db:
            oldest = db.scalar(select(func.min(DiscoveredMachine.last_heartbeat_at)))
        if oldest is not None:
            oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
            self._gauge("oldest heartbeat age (s)", (datetime.now(UTC) - oldest).total_seconds())

    def _run(self) -> None:
        rounds = 0
        while not self._stop.wait(0.5):
            self._sample_backlog()
            if rounds % 60 == 0:  # every ~30 s, as a Prometheus server scrapes
                self._time("/metrics scrape (every ~30 s)", self._scrape)
            rounds += 1
            self._time("list machines (page of 100)", lambda: machines.list_machines(self.ctx, limit=100))
            self._time("list machines (page 50 of 100)",
                       lambda: machines.list_machines(self.ctx, limit=100, offset=5000))  # fmt: skip
            self._time("list restore points (page of 100)",
                       lambda: restore_points.list_restore_points(self.ctx, limit=100))  # fmt: skip
            self._time("list sessions", lambda: sessions.list_sessions(self.ctx, limit=100))
            if self.session_id:
                self._time("session detail (a page of 100 tasks + counts)", self._session_detail)

    def _scrape(self) -> None:
        """What ``GET /metrics`` renders (uncached: scrapes are ~30 s apart): state gauges and events."""
        self.gauges.setdefault("/metrics size (KiB)", []).append(len(metrics.render(self.registry)) / 1024)

    def _session_detail(self) -> None:
        assert self.session_id is not None
        sessions.get_session(self.ctx, self.session_id)

    def start(self) -> ApiProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)


class Table(list[tuple[str, str]]):
    def append(self, row: tuple[str, str]) -> None:
        if not self:
            print(f"{'measure':<78}  value\n{'-' * 78}  {'-' * 30}", flush=True)
        super().append(row)
        print(f"{row[0]:<78}  {row[1]}", flush=True)


def run_fleet(ctx: ServerContext, folder: Path, count: int, args: argparse.Namespace, rows: Table,
              label: str, options: dict[str, Any] | None) -> None:  # fmt: skip
    world = build_world(ctx, folder / "lab", machines=0)
    if options is not None:  # SQS on moto: the world's credential becomes an AWS one
        with ctx.db() as db:
            group = db.get(ProtectionGroup, world.group_id)
            assert group is not None
            credential = db.get(Credential, group.credential_id)
            assert credential is not None
            credential.provider, credential.options = "aws", options
            credential.secret = ctx.secrets.seal(KEYS)
    with ctx.db() as db:
        group = db.get(ProtectionGroup, world.group_id)
        assert group is not None
        provider = ctx.provider_for(group.credential_id)
    provider.queues.ensure_queue(server_queue_name(ctx.server_id))
    started = time.perf_counter()
    fleet: SimulatedFleet | SimulatorProcs
    if args.sim_procs:
        fleet = SimulatorProcs(ctx, world.group_id, count, args.sim_procs)
    else:
        fleet = SimulatedFleet.register(ctx, provider, world.group_id, count)
    rows.append(
        (f"{label}: register {count} machines + agent queues", f"{time.perf_counter() - started:.1f} s")
    )
    consumers = ConsumerProcs(ctx, args.server_procs, args.workers) if args.server_procs else None
    try:
        _measure(ctx, world, provider, fleet, consumers, count, args, rows, label)
    finally:
        fleet.stop()
        stop_consumers()
        if consumers is not None:
            consumers.stop()
            rss_consumers = consumers.usage()[1]
            consumers.close()
            rows.append((f"{label}: peak RSS of the largest consumer process", f"{rss_consumers:.0f} MiB"))
        if isinstance(fleet, SimulatorProcs):
            fleet.close()
        provider.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows.append((f"{label}: peak RSS of this process so far", f"{rss:.0f} MiB"))


def _measure(ctx: ServerContext, world: Any, provider: Any, fleet: SimulatedFleet | SimulatorProcs,
             consumers: ConsumerProcs | None, count: int, args: argparse.Namespace, rows: Table,
             label: str) -> None:  # fmt: skip
    server_cpu = ServerCpu(consumers)
    # Heartbeats wait on the queue first, so the drain measures the server alone (not the simulator).
    started = time.perf_counter()
    fleet.heartbeat_all()
    sent = time.perf_counter() - started
    cpu, started = server_cpu(), time.perf_counter()
    if consumers is not None:
        consumers.start()
    else:
        ensure_consumers(ctx, workers=args.workers)

    def beating() -> bool:
        with ctx.db() as db:
            stmt = select(func.count()).where(DiscoveredMachine.last_heartbeat_at.is_not(None))
            return db.scalar(stmt) == count

    wait_until(beating, timeout=3600, what="heartbeats applied", poll=0.2)
    took = time.perf_counter() - started
    used = server_cpu() - cpu
    drained = f"{took:.1f} s = {count / took:.0f}/s, {1000 * used / count:.1f} ms CPU each"
    rows.append(
        (f"{label}: {count} heartbeats: simulator sends / server drains", f"{sent:.0f} s / {drained}")
    )

    if args.soak:
        _soak(ctx, fleet, provider, count, args, rows, label)
    job_id = world.add_job(retention={"keep_last": 1},
                           options={"parallel_machines": args.parallel, "poll_slice_seconds": 2})  # fmt: skip
    fleet.start(threads=args.agent_threads, idle_seconds=0.05, heartbeat_seconds=args.heartbeat_seconds)
    for day in range(1, args.days + 1):
        size_before = db_bytes(ctx)
        probe = ApiProbe(ctx, provider.queues.get_queue(server_queue_name(ctx.server_id))).start()
        counter = StatementCounter(ctx.engine, waiting=("commands.await_result",))
        if args.count_sql:  # the probe's reads and heartbeats are counted too
            counter.__enter__()
        sim_cpu = fleet.usage()[0] if isinstance(fleet, SimulatorProcs) else 0.0
        cpu, started = server_cpu(), time.perf_counter()
        session_id = start_job(ctx, job_id, dispatcher=Dispatcher(ctx))
        probe.session_id = session_id
        _await_job(ctx, session_id, started)
        wall, used = time.perf_counter() - started, server_cpu() - cpu
        if isinstance(fleet, SimulatorProcs):
            sim_used = fleet.usage()[0] - sim_cpu
            rows.append((f"{label}: day {day} CPU of the simulator processes during the job",
                         f"{sim_used:.1f} s ({100 * sim_used / wall:.0f} % of one core)"))  # fmt: skip
        probe.stop()
        if args.count_sql:
            counter.__exit__(None, None, None)
            per = [n / count for n in (counter.statements, counter.waiting_statements,
                                       counter.transactions, counter.waiting_transactions)]  # fmt: skip
            rows.append((f"{label}: day {day} SQL per machine: statements / transactions (result wait)",
                         "{:.1f} ({:.1f}) / {:.1f} ({:.1f})".format(*per)))  # fmt: skip
        with ctx.db() as db:
            session = db.get(JobSession, session_id)
            assert session is not None
            state, reason = session.state, session.reason
            trips = [
                (done - sent_at).total_seconds() * 1000
                for done, sent_at in db.execute(
                    select(CommandRecord.completed_at, CommandRecord.sent_at).where(
                        CommandRecord.kind == "backup", CommandRecord.completed_at.is_not(None),
                        CommandRecord.task_id.in_(
                            select(SessionTask.id).where(SessionTask.session_id == session_id)
                        ),
                    )
                )
                if done is not None and sent_at is not None
            ]  # fmt: skip
            fell_back = db.scalar(
                select(func.count()).where(
                    CommandRecord.channel != "queue",
                    CommandRecord.task_id.in_(
                        select(SessionTask.id).where(SessionTask.session_id == session_id)
                    ),
                )
            )
        grown = db_bytes(ctx) - size_before
        rows.append(
            (
                f"{label}: day {day} commands that took the fallback channel (stale heartbeat)",
                f"{fell_back}",
            )
        )
        rows.append((f"{label}: day {day} job over {count} ({args.parallel} parallel): state", f"{state}"
                     + ("" if state == "success" else f" ({reason[:80]})")))  # fmt: skip
        rows.append((f"{label}: day {day} job wall time / machines per second",
                     f"{wall:.1f} s / {count / wall:.1f}"))  # fmt: skip
        rows.append((f"{label}: day {day} backup round trip p50 / p99 (ms)",
                     f"{percentile(trips, 0.5):.0f} / {percentile(trips, 0.99):.0f}"))  # fmt: skip
        what = "server processes" if args.sim_procs else "process (server + simulator)"
        rows.append((f"{label}: day {day} CPU of the {what} during the job",
                     f"{used:.1f} s ({100 * used / wall:.0f} % of one core) = "
                     f"{1000 * used / count:.0f} ms per machine"))  # fmt: skip
        rows.append((f"{label}: day {day} DB growth (total)",
                     f"{grown / 1024:.0f} KiB = {grown / count:.0f} B per machine "
                     f"({db_bytes(ctx) / 2**20:.1f} MiB)"))  # fmt: skip
        _load_rows(rows, f"{label}: day {day}", fleet, probe, gauges=" during the job", samples=" under load")


def _soak(ctx: ServerContext, fleet: SimulatedFleet | SimulatorProcs, provider: Any, count: int,
          args: argparse.Namespace, rows: Table, label: str) -> None:  # fmt: skip
    """Heartbeats only, at the deployed interval, for ``--soak`` seconds: does the server keep up?"""
    probe = ApiProbe(ctx, provider.queues.get_queue(server_queue_name(ctx.server_id)))
    fleet.start(threads=args.agent_threads, idle_seconds=0.05, heartbeat_seconds=args.heartbeat_seconds)
    cpu, started = cpu_seconds(), time.perf_counter()
    try:
        probe.start()
        time.sleep(args.soak)
    finally:
        probe.stop()
        fleet.stop()
    wall, used = time.perf_counter() - started, cpu_seconds() - cpu
    rate = count / args.heartbeat_seconds
    what = f"soak {wall:.0f} s, a heartbeat every {args.heartbeat_seconds:.0f} s each = {rate:.0f}/s"
    rows.append((f"{label}: {what}: process CPU", f"{100 * used / wall:.0f} % of one core"))
    _load_rows(rows, f"{label}: soak", fleet, probe)


def _load_rows(rows: Table, prefix: str, fleet: SimulatedFleet | SimulatorProcs, probe: ApiProbe,
               gauges: str = "", samples: str = "") -> None:  # fmt: skip
    """How the server kept up, as the daily job and the soak both report it: the simulator's worst
    heartbeat lateness, then the probe's gauges and API latencies (``gauges``/``samples``: how the
    rows name the period)."""
    rows.append((f"{prefix} simulator heartbeats: worst lateness against their schedule",
                 f"{fleet.counts.heartbeat_late_max:.1f} s"))  # fmt: skip
    for name, values in probe.gauges.items():
        rows.append((f"{prefix} {name}{gauges} p50 / max, n={len(values)}",
                     f"{percentile(values, 0.5):.0f} / {max(values):.0f}"))  # fmt: skip
    for name, taken in probe.samples.items():
        rows.append((f"{prefix} {name}{samples} p50 / max (ms), n={len(taken)}",
                     f"{percentile(taken, 0.5):.0f} / {max(taken):.0f}"))  # fmt: skip


def _await_job(ctx: ServerContext, session_id: str, started: float, every: float = 60.0) -> None:
    """Wait for the job, printing its progress every ``every`` s to stderr: a long run that has to be
    stopped still says how far it got and whether commands were falling back."""
    next_report, deadline = started + every, started + 24 * 3600
    while not _ended(ctx, session_id):
        if time.perf_counter() > deadline:
            raise TimeoutError("the daily job did not end within 24 hours")
        if time.perf_counter() >= next_report:
            next_report += every
            with ctx.db() as db:
                tasks = select(SessionTask.id).where(SessionTask.session_id == session_id)
                done = db.scalar(select(func.count()).where(
                    CommandRecord.task_id.in_(tasks), CommandRecord.completed_at.is_not(None)))  # fmt: skip
                fell_back = db.scalar(select(func.count()).where(
                    CommandRecord.task_id.in_(tasks), CommandRecord.channel != "queue"))  # fmt: skip
            print(f"[{time.perf_counter() - started:.0f} s] commands done {done}, fell back {fell_back}",
                  file=sys.stderr, flush=True)  # fmt: skip
        time.sleep(0.5)


def _ended(ctx: ServerContext, session_id: str) -> bool:
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        return session is not None and session.ended_at is not None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--machines", default="200,1000", help="comma-separated fleet sizes")
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of heartbeats only, before the job")
    parser.add_argument("--parallel", type=int, default=64, help="the job's parallel_machines")
    parser.add_argument("--heartbeat-seconds", type=float, default=30.0, help="each agent's (as deployed)")
    parser.add_argument("--workers", type=int, default=4, help="server-queue consumer threads")
    parser.add_argument("--agent-threads", type=int, default=4, help="threads sweeping the agents' queues")
    parser.add_argument(
        "--postgres", action="store_true", help="PostgreSQL (the test peer) instead of SQLite"
    )
    parser.add_argument(
        "--count-sql", action="store_true", help="count SQL statements per machine in the job"
    )
    parser.add_argument("--sim-procs", type=int, default=0, help="simulated agents in N processes")
    parser.add_argument("--server-procs", type=int, default=0, help="server-queue consumers in M processes")
    parser.add_argument("--sqs", action="store_true", help="queues on SQS (a moto server) instead of local")
    args = parser.parse_args()
    rows = Table()
    pg = Postgres.start() if args.postgres else None
    moto = MotoServer.start() if args.sqs else None
    try:
        for count in [int(n) for n in args.machines.split(",")]:
            with tempfile.TemporaryDirectory(prefix="ck-fleet-") as tmp:
                folder = Path(tmp)
                url = fresh_postgres_url(pg) if pg else None
                ctx = make_context(folder, url)
                options = None
                if moto is not None:
                    options = {
                        "endpoint_url": moto.endpoint,
                        "region": "us-east-1",
                        "machine_credentials": KEYS,
                    }
                label = f"{'pg' if pg else 'sqlite'}+{'sqs' if moto else 'local'}"
                try:
                    run_fleet(ctx, folder, count, args, rows, label, options)
                finally:
                    ctx.close()
    finally:
        if pg is not None:
            pg.stop()
        if moto is not None:
            moto.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
