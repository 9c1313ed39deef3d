"""Prometheus metrics: ``GET /metrics``.

Two kinds. Events (session durations, bytes backed up, command round trips) are counted where
they happen, in this process's ``EVENTS`` registry. State (sessions by state, machines by status,
heartbeat ages, queue depth, the fallback pool's backlog) is read at scrape time by ``StateCollector``:
a few grouped ``SELECT``s, so a scrape costs the same whatever ran before. With ``--workers N``
each worker keeps its own event counts and a scrape reaches one worker: state gauges are exact,
event metrics are per process (run one worker, or scrape each, when they matter).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

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


class StateCollector(Collector):
    """Gauges computed from the database (and the server queues) at each scrape."""

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
        machines = GaugeMetricFamily(
            "cloudkeep_machines", "Discovered machines, by status.", labels=["status"]
        )
        heartbeat = GaugeMetricFamily(
            "cloudkeep_machine_heartbeat_age_seconds",
            "Seconds since each deployed machine's last heartbeat was sent.",
            labels=["machine", "name"],
        )
        now = self.clock()
        with self.ctx.db() as db:
            by_state = select(JobSession.kind, JobSession.state, func.count()).group_by(
                JobSession.kind, JobSession.state
            )
            for kind, state, count in db.execute(by_state):
                sessions.add_metric([kind, state], count)
            for status, count in db.execute(
                select(DiscoveredMachine.status, func.count()).group_by(DiscoveredMachine.status)
            ):
                machines.add_metric([status], count)
            beats = select(
                DiscoveredMachine.id, DiscoveredMachine.name, DiscoveredMachine.last_heartbeat_at
            ).where(DiscoveredMachine.last_heartbeat_at.is_not(None))
            for machine_id, name, beat in db.execute(beats):
                if beat is not None:
                    age = (now - _aware(beat)).total_seconds()
                    heartbeat.add_metric([machine_id, name], max(0.0, age))
        yield from (sessions, machines, heartbeat)
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
