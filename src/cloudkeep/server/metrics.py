"""Prometheus metrics: ``GET /metrics``.

Two kinds. Events (session durations, bytes backed up, command round trips) are counted where
they happen, in this process's ``EVENTS`` registry. State (sessions by state, machines by status,
heartbeat ages, queue depth, the fallback pool's backlog) is read at scrape time by ``StateCollector``:
a few grouped ``SELECT``s, so a scrape costs the same whatever ran before, and its size does not
grow with the fleet. ``RenderCache`` renders at most once per interval however often it is
scraped. With ``--workers N`` each worker keeps its own event counts and a scrape reaches one
worker: state gauges are exact, event metrics are per process (run one worker, or scrape each,
when they matter).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from cloudkeep.server.clock import utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import DiscoveredMachine, JobSession

if TYPE_CHECKING:  # imported at scrape time: fallback → consumer → metrics
    from cloudkeep.server.fallback import FallbackPool

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

EVENTS = CollectorRegistry(auto_describe=True)
SESSION_SECONDS = Histogram(
    "cloudkeep_session_duration_seconds",
    "Wall time of finished sessions, by kind and final state.",
    ["kind", "state"],
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600),
    registry=EVENTS,
)
BYTES_BACKED_UP = Counter(
    "cloudkeep_backup_bytes",
    "Bytes machines uploaded to repositories in finished backup sessions (after dedup/compression).",
    registry=EVENTS,
)
BYTES_READ = Counter(
    "cloudkeep_backup_read_bytes", "Bytes machines read in finished backup sessions.", registry=EVENTS
)
COMMAND_SECONDS = Histogram(
    "cloudkeep_command_round_trip_seconds",
    "From sending a command to applying its result, by channel (queue or fallback) and outcome.",
    ["channel", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600),
    registry=EVENTS,
)


def record_session(kind: str, state: str, seconds: float, bytes_read: int, bytes_uploaded: int) -> None:
    """A session ended (called once, where it ends)."""
    SESSION_SECONDS.labels(kind=kind, state=state).observe(max(0.0, seconds))
    if kind == "backup":
        BYTES_READ.inc(max(0, bytes_read))
        BYTES_BACKED_UP.inc(max(0, bytes_uploaded))


def record_command(channel: str, ok: bool, seconds: float) -> None:
    """A command's result was applied."""
    COMMAND_SECONDS.labels(channel=channel, outcome="ok" if ok else "failed").observe(max(0.0, seconds))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# Upper bounds (seconds) of the heartbeat-age buckets: around the default 60 s limit, then hours.
HEARTBEAT_AGE_BUCKETS = (15.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 900.0, 3600.0, 6 * 3600.0, 24 * 3600.0)


# Only deployed machines' heartbeats matter (and alert): a missing, unmanaged or outdated machine's
# last heartbeat grows old by design, and the oldest-first list must not fill up with them.
DEPLOYED = "deployed"
Late = tuple[str, str, float]  # machine id, name, heartbeat age in seconds


def _bound(seconds: float) -> str:
    return "+Inf" if seconds == float("inf") else f"{seconds:g}"


class StateCollector(Collector):
    """Gauges computed from the database (and the server queues) at each scrape.

    Bounded whatever the fleet size: machines are counted by one grouped query (status; for deployed
    ones heartbeat-age buckets, the oldest heartbeat, how many are late), and only the
    ``metrics_late_machines`` deployed machines with the oldest heartbeats past
    ``heartbeat_timeout_seconds`` get a series of their own: the ones an alert names. At 20,000
    machines a series per machine was 2 MiB a scrape and halved a daily job (docs/scale.md).
    """

    def __init__(
        self,
        ctx: ServerContext,
        *,
        queue_depths: Callable[[], dict[str, int]] | None = None,
        clock: Callable[[], datetime] = utcnow,
        fallbacks: Callable[[], FallbackPool | None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.queue_depths = queue_depths
        self.clock = clock
        self.fallbacks = fallbacks

    def collect(self) -> Iterator[Metric]:
        sessions = GaugeMetricFamily(
            "cloudkeep_sessions", "Sessions in the database, by kind and state.", labels=["kind", "state"]
        )
        with self.ctx.db() as db:
            by_state = select(JobSession.kind, JobSession.state, func.count()).group_by(
                JobSession.kind, JobSession.state
            )
            for kind, state, count in db.execute(by_state):
                sessions.add_metric([kind, state], count)
            families = [sessions, *self._machines(db, self.clock())]
        yield from families
        if self.queue_depths is not None:
            depth = GaugeMetricFamily(
                "cloudkeep_server_queue_depth",
                "Approximate messages waiting on a server queue this process consumes.",
                labels=["queue"],
            )
            for name, count in sorted(self.queue_depths().items()):
                depth.add_metric([name], count)
            yield depth
        yield from self._fallback_pool()

    def _machines(self, db: Session, now: datetime) -> Iterator[Metric]:
        """Machines by status and deployed ones by heartbeat age (one grouped query), then the late
        ones by name (a second query, only when some are late)."""
        limit = self.ctx.settings.heartbeat_timeout_seconds
        last = DiscoveredMachine.last_heartbeat_at
        late_before = now - timedelta(seconds=limit)
        # A machine is late where the dispatcher stops trusting its queue: age >= limit.
        columns = [func.count(), func.count(last), func.min(last), func.count(case((last <= late_before, 1)))]
        columns += [func.count(case((last >= now - timedelta(seconds=b), 1))) for b in HEARTBEAT_AGE_BUCKETS]
        by_status = select(DiscoveredMachine.status, *columns).group_by(DiscoveredMachine.status)
        rows: list[tuple[Any, ...]] = [tuple(row) for row in db.execute(by_status)]
        machines = GaugeMetricFamily(
            "cloudkeep_machines", "Discovered machines, by status.", labels=["status"]
        )
        beating = late = 0
        oldest: datetime | None = None
        buckets = [0] * len(HEARTBEAT_AGE_BUCKETS)
        for row in rows:
            machines.add_metric([str(row[0])], int(row[1]))
            if row[0] == DEPLOYED:
                beating, oldest, late = int(row[2]), row[3], int(row[4])
                buckets = [int(count) for count in row[5:]]
        yield machines
        ages = GaugeMetricFamily(
            "cloudkeep_machines_by_heartbeat_age",
            "Machines whose last heartbeat was sent at most le seconds ago (cumulative, like a "
            "histogram's buckets; +Inf: every machine that sent one).",
            labels=["le"],
        )
        for bound, count in zip((*HEARTBEAT_AGE_BUCKETS, float("inf")), (*buckets, beating), strict=True):
            ages.add_metric([_bound(bound)], count)
        yield ages
        if oldest is not None:
            yield GaugeMetricFamily(
                "cloudkeep_machine_heartbeat_oldest_age_seconds",
                "Seconds since the oldest last heartbeat of any machine was sent.",
                value=max(0.0, (now - _aware(oldest)).total_seconds()),
            )
        yield GaugeMetricFamily(
            "cloudkeep_machines_heartbeat_late",
            "Machines whose last heartbeat is at least heartbeat_timeout_seconds old (their commands "
            "take the cloud's command channel).",
            value=late,
        )
        listed = self._late_machines(db, now, late_before) if late else []
        yield GaugeMetricFamily(
            "cloudkeep_machines_heartbeat_late_unlisted",
            "Late machines without a cloudkeep_machine_heartbeat_age_seconds series (beyond the "
            "metrics_late_machines oldest).",
            value=late - len(listed),
        )
        heartbeat = GaugeMetricFamily(
            "cloudkeep_machine_heartbeat_age_seconds",
            "Seconds since a late machine's last heartbeat was sent (the metrics_late_machines oldest).",
            labels=["machine", "name"],
        )
        for machine_id, name, age in listed:
            heartbeat.add_metric([machine_id, name], age)
        yield heartbeat

    def _late_machines(self, db: Session, now: datetime, late_before: datetime) -> list[Late]:
        """The oldest late machines, with their ages: the ones an alert names."""
        last = DiscoveredMachine.last_heartbeat_at
        oldest_first = (
            select(DiscoveredMachine.id, DiscoveredMachine.name, last)
            .where(DiscoveredMachine.status == DEPLOYED, last <= late_before)
            .order_by(last, DiscoveredMachine.id)
            .limit(self.ctx.settings.metrics_late_machines)
        )
        rows = db.execute(oldest_first)
        return [(i, n, max(0.0, (now - _aware(b)).total_seconds())) for i, n, b in rows if b is not None]

    def _fallback_pool(self) -> Iterator[Metric]:
        """This process's fallback pool: commands waiting for a thread are a silent fleet's backlog
        (each waits its turn for the cloud's command channel), which nothing else shows."""
        from cloudkeep.server.fallback import current_pool

        pool = (self.fallbacks or current_pool)()
        waiting, running = (pool.queued, pool.busy) if pool is not None else (0, 0)
        workers = pool.workers if pool is not None else self.ctx.settings.parallel_machines
        for name, text, value in (
            ("queued", "Fallback commands waiting for a thread in this process.", waiting),
            ("running", "Fallback commands running in this process.", running),
            ("workers", "Fallback commands this process runs at once (parallel_machines).", workers),
        ):
            yield GaugeMetricFamily(
                "cloudkeep_fallback_workers" if name == "workers" else f"cloudkeep_fallback_commands_{name}",
                text,
                value=value,
            )


class _Delegate(Collector):
    """Exposes another registry's metrics (the process-wide events) through an app's registry."""

    def __init__(self, registries: Iterable[CollectorRegistry]) -> None:
        self.registries = list(registries)

    def collect(self) -> Iterator[Metric]:
        for registry in self.registries:
            yield from registry.collect()


def build_registry(
    ctx: ServerContext, *, queue_depths: Callable[[], dict[str, int]] | None = None
) -> CollectorRegistry:
    """The registry ``/metrics`` renders for one app: its state gauges plus this process's events."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(ctx, queue_depths=queue_depths))
    registry.register(_Delegate([EVENTS]))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


class RenderCache:
    """Serves one render to every scrape within ``min_interval`` seconds of it.

    A scrape reads the database in the serving process; a storm of them (several Prometheus
    servers, a dashboard reloading) must not take the CPU a running job needs. Scrapes that arrive
    during a render wait for it instead of starting their own. Event counters are up to
    ``min_interval`` late; a failed render is not kept.
    """

    def __init__(
        self, registry: CollectorRegistry, *, min_interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = registry
        self.min_interval = min_interval
        self.clock = clock
        self.renders = 0  # how many times the registry was rendered (tests)
        self._body: bytes | None = None
        self._rendered_at = 0.0
        self._lock = threading.Lock()

    def render(self) -> bytes:
        with self._lock:
            started = self.clock()
            if self._body is not None and started - self._rendered_at < self.min_interval:
                return self._body
            self._body = render(self.registry)
            self._rendered_at = started
            self.renders += 1
            return self._body
