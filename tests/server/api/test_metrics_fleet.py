"""``/metrics`` for a large fleet: bounded output, late machines named, aggregates right, and a
render cache that follows its injected clock (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, select
from tests.server.fixtures import Seeded, add_machine

from cloudkeep.server import metrics
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import DiscoveredMachine, ProtectionGroup

NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
FLEET = 20_000
LATE = 300  # past the 60 s limit: ages 61 s … 360 s


def _age(index: int) -> float:
    """Healthy machines spread over 0 to 59 s; the last LATE machines are late, the oldest last."""
    return float(60 + index - (FLEET - LATE) + 1) if index >= FLEET - LATE else float(index % 60)


def _fleet(ctx: ServerContext, group_name: str) -> None:
    with ctx.db() as db:
        group = db.scalar(select(ProtectionGroup.id).where(ProtectionGroup.name == group_name))
        rows = [
            {"protection_group_id": group, "cloud_id": f"i-{i}", "name": f"m{i:05d}", "platform": "linux",
             "status": "deployed", "last_heartbeat_at": NOW - timedelta(seconds=_age(i))}
            for i in range(FLEET)
        ]  # fmt: skip
        db.execute(insert(DiscoveredMachine), rows)


def _scrape(ctx: ServerContext, now: datetime = NOW) -> tuple[str, dict[tuple[str, tuple[str, ...]], float]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.StateCollector(ctx, clock=lambda: now))
    text = metrics.render(registry).decode()
    samples = {
        (s.name, tuple(f"{k}={v}" for k, v in sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def test_a_fleet_of_20000_scrapes_in_bounded_size(ctx: ServerContext, seeded: Seeded) -> None:
    """One series per late machine (the oldest, up to the setting), counts for everyone else."""
    _fleet(ctx, seeded.group)
    gone = add_machine(ctx, seeded.group, "terminated", status="missing")
    with ctx.db() as db:
        row = db.get(DiscoveredMachine, gone)
        assert row is not None
        row.last_heartbeat_at = NOW - timedelta(days=30)  # old by design: never listed, never counted late
    text, got = _scrape(ctx)

    assert len(text) < 32 * 1024  # a series per machine was ~2 MiB at this size
    assert got[("cloudkeep_machines", ("status=deployed",))] == FLEET
    assert got[("cloudkeep_machines", ("status=missing",))] == 1
    assert got[("cloudkeep_machines_heartbeat_late", ())] == LATE
    listed = {
        labels: age
        for (name, labels), age in got.items()
        if name == "cloudkeep_machine_heartbeat_age_seconds"
    }
    limit = ctx.settings.metrics_late_machines
    assert len(listed) == limit == 100
    assert got[("cloudkeep_machines_heartbeat_late_unlisted", ())] == LATE - limit
    oldest = {f"name=m{i:05d}": _age(i) for i in range(FLEET - limit, FLEET)}
    assert {labels[1]: age for labels, age in listed.items()} == oldest
    assert got[("cloudkeep_machine_heartbeat_oldest_age_seconds", ())] == _age(FLEET - 1) == 360

    ages = [_age(i) for i in range(FLEET)]
    for bound in (*metrics.HEARTBEAT_AGE_BUCKETS, float("inf")):
        le = "+Inf" if bound == float("inf") else f"{bound:g}"
        assert got[("cloudkeep_machines_by_heartbeat_age", (f"le={le}",))] == sum(a <= bound for a in ages), (
            le
        )


def test_a_late_machine_appears_and_leaves(ctx: ServerContext, seeded: Seeded) -> None:
    """At the limit a machine is late (as the dispatcher judges it); a fresh heartbeat removes it."""
    web = add_machine(ctx, seeded.group, "web")
    add_machine(ctx, seeded.group, "new")  # deployed, no heartbeat yet: no age at all
    with ctx.db() as db:
        row = db.get(DiscoveredMachine, web)
        assert row is not None
        row.last_heartbeat_at = NOW - timedelta(seconds=59)
    series = ("cloudkeep_machine_heartbeat_age_seconds", (f"machine={web}", "name=web"))
    _, early = _scrape(ctx)
    assert series not in early and early[("cloudkeep_machines_heartbeat_late", ())] == 0
    assert early[("cloudkeep_machines_by_heartbeat_age", ("le=+Inf",))] == 1
    _, late = _scrape(ctx, NOW + timedelta(seconds=1))
    assert late[series] == 60 and late[("cloudkeep_machines_heartbeat_late", ())] == 1
    assert late[("cloudkeep_machines_heartbeat_late_unlisted", ())] == 0
    with ctx.db() as db:
        row = db.get(DiscoveredMachine, web)
        assert row is not None
        row.last_heartbeat_at = NOW
    _, back = _scrape(ctx, NOW + timedelta(seconds=1))
    assert series not in back and back[("cloudkeep_machine_heartbeat_oldest_age_seconds", ())] == 1


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_render_cache_follows_its_clock(ctx: ServerContext, seeded: Seeded) -> None:
    """Scrapes within the interval get the same render, without reading the database again."""
    clock = _Clock()
    cache = metrics.RenderCache(metrics.build_registry(ctx), min_interval=10.0, clock=clock)
    first = cache.render()
    assert b'cloudkeep_machines{status="deployed"}' not in first
    add_machine(ctx, seeded.group, "web")
    clock.now += 9.9
    assert cache.render() is first and cache.renders == 1
    clock.now += 0.1
    fresh = cache.render()
    assert b'cloudkeep_machines{status="deployed"} 1.0' in fresh and cache.renders == 2
    assert cache.render() is fresh
