"""The session runner's bookkeeping, driven through an in-process FAKE dispatcher (see jobs_fakes).

Why a fake here: these tests inject exact agent failures and long-running tasks to check the
catalog (tasks, restore points, statistics, stop, credential refresh, retention) deterministically
and fast. The real dispatcher + machine processes are exercised in test_jobs_e2e.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import select
from tests.server.jobs_fakes import (
    FakeDispatcher,
    World,
    build_world,
    fresh_postgres_url,
    make_context,
)

from cloudkeep.errors import ConfigurationError, ConflictError, NotFoundError
from cloudkeep.repo import retention as engine_retention
from cloudkeep.repo.retention import ForgetResult, RetentionPlan
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import BackupJob, JobSession, RestorePoint, SessionTask
from cloudkeep.server.jobs import retention as ret
from cloudkeep.server.jobs import start_job, stop_session
from cloudkeep.server.jobs.backup_body import build_backup_body


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ctx(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerContext]:
    """Every runner test runs on SQLite (embedded) and on PostgreSQL (scale-out)."""
    url = fresh_postgres_url(request.getfixturevalue("postgres")) if request.param == "postgresql" else None
    context = make_context(tmp_path, url)
    yield context
    context.close()


@pytest.fixture
def world(ctx: ServerContext, tmp_path: Path) -> World:
    return build_world(ctx, tmp_path / "lab", undeployed=(2,))


def session_of(ctx: ServerContext, session_id: str) -> tuple[JobSession, dict[str, SessionTask]]:
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None
        tasks = {t.machine_id: t for t in session.tasks}
        return session, tasks


def points(ctx: ServerContext, **where: object) -> list[RestorePoint]:
    with ctx.db() as db:
        stmt = select(RestorePoint).filter_by(**where).order_by(RestorePoint.created_at)
        return list(db.scalars(stmt))


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_job_over_three_machines_skips_the_undeployed_one_with_a_reason(
    ctx: ServerContext, world: World
) -> None:
    fake = FakeDispatcher(ctx)
    job_id = world.add_job()
    session_id = start_job(ctx, job_id, wait=True, dispatcher=fake)
    session, tasks = session_of(ctx, session_id)
    assert session.state == "warning"
    assert "2 of 3 machine(s) backed up" in session.reason
    assert [tasks[m].state for m in world.machine_ids] == ["success", "success", "skipped"]
    skipped = tasks[world.machine_ids[2]]
    assert (
        "vm-2 is not deployed (status failed: install step failed: no space left on device)" in skipped.reason
    )
    assert "run a rescan" in skipped.reason
    # one backup command per deployed machine, password only in the sealed part
    backups = fake.kinds("backup")
    assert sorted(b.machine_id for b in backups) == sorted(world.machine_ids[:2])
    for command in backups:
        assert command.sealed is not None and command.sealed["password"] == "correct horse battery"
        assert command.sealed["store_url"].startswith("file://")
        assert "password" not in str(command.body)
        assert (
            command.body["hostname"] == f"{command.machine_id}-{job_id}" and command.body["mode"] == "files"
        )
    recorded = points(ctx, job_id=job_id)
    assert len(recorded) == 2 and {p.session_id for p in recorded} == {session_id}
    assert {p.snapshot_id for p in recorded} == {s[0] for v in fake.snapshots.values() for s in v}


def test_statistics_ratios_speed_and_bottleneck(ctx: ServerContext, world: World) -> None:
    fake = FakeDispatcher(ctx)
    session_id = start_job(ctx, world.add_job(), machine_ids=["vm-0"], wait=True, dispatcher=fake)
    session, tasks = session_of(ctx, session_id)
    task = tasks[world.machine_ids[0]]
    assert session.state == "success"
    assert (task.bytes_read, task.bytes_transferred, task.files) == (1000, 100, 7)
    assert task.stats["dedup_ratio"] == 12.5  # 5000 processed / 400 new
    assert task.stats["compression_ratio"] == 4.0  # 400 new / 100 sent
    assert task.stats["bottleneck"] == "network"  # upload 3 s > read 1 s
    assert task.stats["speed_bytes_per_second"] > 0
    assert session.stats["bytes_read"] == 1000 and session.stats["bottleneck"] == "network"
    assert session.stats["states"] == {"success": 1}
    (point,) = points(ctx)
    assert (point.size, point.files, point.retain_until) == (5000, 7, None)  # all it holds, not what was read


def test_repository_unreachable_mid_session_fails_that_machine_and_keeps_the_rest(
    ctx: ServerContext, world: World
) -> None:
    fake = FakeDispatcher(ctx)
    job_id = world.add_job()
    first = start_job(ctx, job_id, wait=True, dispatcher=fake)
    assert session_of(ctx, first)[0].state == "warning"
    before = {p.id for p in points(ctx)}
    fake.fail[world.machine_ids[1]] = (
        "storage file:///lab/backups unreachable: connection refused after 5 retries"
    )
    second = start_job(ctx, job_id, wait=True, dispatcher=fake)
    session, tasks = session_of(ctx, second)
    failed = tasks[world.machine_ids[1]]
    assert failed.state == "failed"
    assert "vm-1: storage file:///lab/backups unreachable" in failed.reason
    assert failed.log[-1]["level"] == "error"
    assert session.state == "warning" and "; vm-1: storage file:///lab/backups unreachable" in session.reason
    # nothing lost: the earlier restore points are all still catalogued, plus the one new success
    after = points(ctx)
    assert before <= {p.id for p in after} and len(after) == len(before) + 1


def test_every_machine_failing_fails_the_session(ctx: ServerContext, world: World) -> None:
    fake = FakeDispatcher(ctx, fail={m: "access denied for s3:PutObject" for m in world.machine_ids})
    session_id = start_job(ctx, world.add_job(), wait=True, dispatcher=fake)
    session, _tasks = session_of(ctx, session_id)
    assert session.state == "failed" and "no machine backed up (0 of 3)" in session.reason
    assert "access denied for s3:PutObject" in session.reason


def test_job_without_machines_fails_clearly(ctx: ServerContext, world: World) -> None:
    with ctx.db() as db:
        job = BackupJob(name="empty", repository_id=world.repository_id)
        db.add(job)
        db.flush()
        job_id = job.id
    session_id = start_job(ctx, job_id, wait=True, dispatcher=FakeDispatcher(ctx))
    session, _ = session_of(ctx, session_id)
    assert session.state == "failed" and "job 'empty' has no machines" in session.reason


def test_bad_references_are_reported(ctx: ServerContext, world: World) -> None:
    job_id = world.add_job()
    with pytest.raises(NotFoundError, match="backup job 'nope' does not exist"):
        start_job(ctx, "nope", dispatcher=FakeDispatcher(ctx))
    with pytest.raises(ConfigurationError, match="machine\\(s\\) ghost are not part of job 'nightly'"):
        start_job(ctx, job_id, machine_ids=["ghost"], dispatcher=FakeDispatcher(ctx))
    with pytest.raises(NotFoundError):
        stop_session(ctx, "0" * 32)


def test_machines_discovered_later_join_the_next_run(ctx: ServerContext, world: World) -> None:
    fake = FakeDispatcher(ctx)
    job_id = world.add_job()
    start_job(ctx, job_id, wait=True, dispatcher=fake)
    from cloudkeep.server.db.models import DiscoveredMachine

    with ctx.db() as db:
        db.add(
            DiscoveredMachine(
                protection_group_id=world.group_id,
                cloud_id="vm-new",
                name="vm-new",
                platform="linux",
                status="deployed",
            )
        )
    session_id = start_job(ctx, job_id, wait=True, dispatcher=fake)
    _session, tasks = session_of(ctx, session_id)
    assert len(tasks) == 4 and sum(t.state == "success" for t in tasks.values()) == 3


def test_stop_session_stops_waiting_and_a_second_start_is_refused_meanwhile(
    ctx: ServerContext, world: World
) -> None:
    fake = FakeDispatcher(ctx, hold={world.machine_ids[0], world.machine_ids[1]})
    job_id = world.add_job(options={"poll_slice_seconds": 0.05})
    session_id = start_job(ctx, job_id, dispatcher=fake)  # background thread
    wait_for(lambda: len(fake.kinds("backup")) == 2)
    with pytest.raises(ConflictError, match="already running"):
        start_job(ctx, job_id, dispatcher=fake)
    stop_session(ctx, session_id)
    wait_for(lambda: session_of(ctx, session_id)[0].state not in ("pending", "running"))
    session, tasks = session_of(ctx, session_id)
    assert session.state == "stopped"
    assert tasks[world.machine_ids[0]].state == "stopped"
    assert points(ctx) == []
    with pytest.raises(ConflictError, match="already ended"):
        stop_session(ctx, session_id)


def test_long_task_gets_refreshed_credentials(ctx: ServerContext, world: World) -> None:
    fake = FakeDispatcher(ctx, hold={world.machine_ids[0]}, release_on_refresh=True)
    job_id = world.add_job(options={"credentials_ttl_seconds": 1, "poll_slice_seconds": 0.05})
    session_id = start_job(ctx, job_id, machine_ids=["vm-0"], wait=True, dispatcher=fake)
    session, tasks = session_of(ctx, session_id)
    assert session.state == "success"
    (refresh,) = fake.kinds("update_credentials")[:1]
    backup = fake.kinds("backup")[0]
    assert refresh.body == {"command_id": backup.command_id}
    assert refresh.sealed is not None and refresh.sealed["password"] == "correct horse battery"
    assert any("credentials refreshed" in line["message"] for line in tasks[world.machine_ids[0]].log)


class RecordedMaintenance:
    """Stands in for the server's forget/prune (``ret.ServerMaintenance``): the fake backups write no
    manifests, so this records what the runner decided; tests/server/test_jobs_e2e.py runs the real
    one against a real repository."""

    calls: ClassVar[list[tuple[str, list[str], str]]] = []

    def __init__(self, provider: Any, location: str, password: str) -> None:
        self.pruned = 0

    def forget(self, machine_id: str, ids: list[str], *, hostname: str, now: Any) -> ForgetResult:
        self.calls.append((machine_id, list(ids), hostname))
        return ForgetResult(removed=list(ids))

    def vouch(self) -> None:  # a format 1-2 repository: nothing to vouch for
        return None

    def prune_once(self, now: Any) -> None:
        self.pruned += 1

    def close(self) -> None:
        pass


@pytest.fixture
def forgets(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str], str]]:
    monkeypatch.setattr(ret, "ServerMaintenance", RecordedMaintenance)
    RecordedMaintenance.calls = []
    return RecordedMaintenance.calls


def test_retention_after_each_session_marks_removed_points(
    ctx: ServerContext, world: World, forgets: list[tuple[str, list[str], str]]
) -> None:
    fake = FakeDispatcher(ctx)
    job_id = world.add_job(retention={"keep_last": 2})
    for _ in range(4):
        start_job(ctx, job_id, machine_ids=["vm-0"], wait=True, dispatcher=fake)
    catalog = sorted(points(ctx, job_id=job_id), key=lambda p: p.created_at)
    live = [p for p in catalog if p.removed_at is None]
    assert len(catalog) == 4 and live == catalog[2:]
    assert fake.kinds("retention") == []  # the server forgets itself: no machine is asked to delete
    hostname = f"{world.machine_ids[0]}-{job_id}"
    assert forgets == [
        (world.machine_ids[0], [catalog[0].snapshot_id], hostname),
        (world.machine_ids[0], [catalog[1].snapshot_id], hostname),
    ]
    with ctx.db() as db:
        assert {s.state for s in db.scalars(select(JobSession))} == {"success"}


def test_immutability_blocks_retention(ctx: ServerContext, tmp_path: Path) -> None:
    world = build_world(ctx, tmp_path / "lab2", machines=1, immutability_days=7)
    fake = FakeDispatcher(ctx)
    job_id = world.add_job(retention={"keep_last": 1})
    for _ in range(3):
        start_job(ctx, job_id, wait=True, dispatcher=fake)
    catalog = points(ctx, job_id=job_id)
    assert len(catalog) == 3 and all(p.removed_at is None for p in catalog)
    assert all(p.retain_until is not None for p in catalog)
    assert fake.kinds("retention") == []  # nothing to remove: every point is still locked
    assert fake.kinds("backup")[0].body["retain_until"] is not None


def test_build_backup_body_modes_and_options(ctx: ServerContext, world: World) -> None:
    from cloudkeep.server.db.models import DiscoveredMachine

    machine = DiscoveredMachine(
        id="m1", name="web", protection_group_id="g", cloud_id="i-1", platform="linux"
    )
    job = BackupJob(
        id="j1",
        name="j",
        mode="file",
        includes=["/etc", "/srv/**/*.conf"],
        excludes=["*.tmp"],
        options={"bandwidth_limit": 1_000_000, "compression_level": 9, "pre_script": "fsfreeze -f /srv"},
    )
    body = build_backup_body(job, machine, None)
    assert (
        body["sources"] == ["/etc"]
        and body["includes"] == ["/srv/**/*.conf"]
        and body["excludes"] == ["*.tmp"]
    )
    assert body["bandwidth_limit"] == 1_000_000 and body["pre_script"] == "fsfreeze -f /srv"
    job.mode = "entire"
    assert build_backup_body(job, machine, None)["sources"] == ["/"]
    job.mode = "volume"
    job.includes = ["/dev/sdb"]
    assert build_backup_body(job, machine, None)["mode"] == "volume"
    job.mode = "weird"
    with pytest.raises(ConfigurationError, match="unknown mode"):
        build_backup_body(job, machine, None)


def test_health_check_runs_check_on_one_deployed_machine(ctx: ServerContext, world: World) -> None:
    from cloudkeep.server.jobs.health import start_health_check

    fake = FakeDispatcher(ctx)
    job_id = world.add_job()
    session_id = start_health_check(ctx, job_id, read_data_subset="10%", wait=True, dispatcher=fake)
    session, _tasks = session_of(ctx, session_id)
    assert session.kind == "check" and session.state == "success" and session.reason == "repository healthy"
    (command,) = fake.kinds("check")
    assert command.body == {"read_data_subset": 0.1} and command.machine_id in world.machine_ids[:2]
    assert command.sealed is not None and command.sealed["password"] == "correct horse battery"


def test_health_check_is_scheduled_once_per_period(ctx: ServerContext, world: World) -> None:
    from datetime import UTC, datetime, timedelta

    from cloudkeep.server.scheduling.scheduler import tick

    fake = FakeDispatcher(ctx)
    world.add_job(options={"health_check": {"every_days": 7, "read_data_subset": "1%"}})
    t0 = datetime(2026, 11, 26, tzinfo=UTC)
    assert len(tick(ctx, t0, dispatcher=fake, wait=True)) == 1
    assert tick(ctx, t0 + timedelta(hours=1), dispatcher=fake, wait=True) == []
    assert len(tick(ctx, t0 + timedelta(days=7), dispatcher=fake, wait=True)) == 1
    assert [c.body["read_data_subset"] for c in fake.kinds("check")] == [0.01, 0.01]


def test_a_session_left_running_by_a_dead_worker_is_recovered(ctx: ServerContext, world: World) -> None:
    from datetime import UTC, datetime, timedelta

    from cloudkeep.server import leases

    job_id = world.add_job()
    with ctx.db() as db:
        orphan = JobSession(
            kind="backup", job_id=job_id, state="running", created_at=datetime.now(UTC) - timedelta(minutes=5)
        )
        alive = JobSession(kind="backup", job_id=job_id, state="running")
        db.add_all([orphan, alive])
        db.flush()
        db.add(SessionTask(session_id=orphan.id, machine_id=world.machine_ids[0], state="running"))
        orphan_id, alive_id = orphan.id, alive.id
    # the young session may still be starting: it blocks the job
    with pytest.raises(ConflictError, match="already running"):
        start_job(ctx, job_id, dispatcher=FakeDispatcher(ctx))
    session, tasks = session_of(ctx, orphan_id)
    assert session.state == "failed" and session.reason.startswith("interrupted: the server worker")
    assert tasks[world.machine_ids[0]].state == "failed"
    # a live lease (another worker is running it) keeps an old session alive
    with ctx.db() as db:
        row = db.get(JobSession, alive_id)
        assert row is not None
        row.created_at = datetime.now(UTC) - timedelta(minutes=5)
    assert leases.acquire(ctx, f"session:{alive_id}", "other-worker", ttl_seconds=60)
    with pytest.raises(ConflictError, match="already running"):
        start_job(ctx, job_id, dispatcher=FakeDispatcher(ctx))
    leases.release(ctx, f"session:{alive_id}", "other-worker")
    new_id = start_job(ctx, job_id, wait=True, dispatcher=FakeDispatcher(ctx))
    assert session_of(ctx, alive_id)[0].state == "failed"
    assert session_of(ctx, new_id)[0].state == "warning"


def test_fsfreeze_option_wraps_the_scripts(ctx: ServerContext, world: World) -> None:
    from cloudkeep.server.db.models import DiscoveredMachine

    machine = DiscoveredMachine(id="m1", name="db", protection_group_id="g", cloud_id="i-1", platform="linux")
    job = BackupJob(
        id="j1", name="j", mode="file", includes=["/srv"],
        options={
            "fsfreeze": ["/srv"],
            "pre_script": "mysql -e 'FLUSH TABLES WITH READ LOCK'",
            "post_script": "true",
        },
    )  # fmt: skip
    body = build_backup_body(job, machine, None)
    assert body["pre_script"].splitlines() == [
        "mysql -e 'FLUSH TABLES WITH READ LOCK'",
        'for m in /srv; do fsfreeze -f "$m" || exit 1; done',
    ]
    assert body["post_script"].splitlines() == ['for m in /srv; do fsfreeze -u "$m"; done', "true"]
    job.options = {"fsfreeze": "srv"}
    with pytest.raises(ConfigurationError, match="option fsfreeze: must be a list of absolute mount points"):
        build_backup_body(job, machine, None)


@pytest.mark.parametrize(("value", "expected"), [("5%", 0.05), ("0.25", 0.25), (1, 1.0), (None, None)])
def test_read_data_share(value: object, expected: float | None) -> None:
    from cloudkeep.server.jobs.health import read_fraction

    assert read_fraction(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["0%", "150%", "lots"])
def test_read_data_share_rejects_nonsense(value: str) -> None:
    from cloudkeep.server.jobs.health import read_fraction

    with pytest.raises(ConfigurationError, match="read_data_subset"):
        read_fraction(value)


def test_plan_and_gfs_flags_come_from_the_one_planner(
    ctx: ServerContext, world: World, monkeypatch: pytest.MonkeyPatch, forgets: list[Any]
) -> None:
    """The runner's plan, the catalog's GFS flags and the command's forget list are one decision,
    made by the engine's planner (the same function the machine uses for a policy-only command)."""
    assert ret.plan_retention is engine_retention.plan_retention
    plans: list[RetentionPlan] = []

    def spy(*args: Any, **kwargs: Any) -> RetentionPlan:
        plans.append(engine_retention.plan_retention(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(ret, "plan_retention", spy)
    fake = FakeDispatcher(ctx)
    job_id = world.add_job(retention={"keep_last": 1, "keep_weekly": 2})
    for _ in range(3):
        start_job(ctx, job_id, machine_ids=["vm-0"], wait=True, dispatcher=fake)
    assert len(plans) == 3
    catalog = {p.id: p for p in points(ctx, job_id=job_id)}
    final = plans[-1]
    assert list(final.keep) == [p.id for p in catalog.values() if p.removed_at is None]
    assert all(catalog[i].gfs == final.gfs[i] for i in final.keep)
    assert forgets[-1][1] == [catalog[i].snapshot_id for i in final.remove]


def test_gfs_flags_are_recorded_in_the_catalog(ctx: ServerContext, world: World, forgets: list[Any]) -> None:
    fake = FakeDispatcher(ctx)
    job_id = world.add_job(retention={"keep_last": 1, "keep_weekly": 2, "keep_monthly": 1})
    for _ in range(2):
        start_job(ctx, job_id, machine_ids=["vm-0"], wait=True, dispatcher=fake)
    catalog = points(ctx, job_id=job_id)
    live = [p for p in catalog if p.removed_at is None]
    # both runs fall in the same week and month: only the newest carries the flags, the older goes
    assert [sorted(p.gfs) for p in live] == [["monthly", "weekly"]]
    assert len(catalog) == 2 and catalog[0].removed_at is not None
