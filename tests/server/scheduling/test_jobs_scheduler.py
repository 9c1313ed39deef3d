"""The scheduler with a controlled clock: ``tick(ctx, now)`` never sleeps.

Backups go through the in-process FAKE dispatcher of jobs_fakes (the scheduler's subject is who
starts what and when, not the data path). Exactly-once is tested on SQLite and on the real
PostgreSQL peer with several concurrent "workers".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.server.jobs_fakes import FakeDispatcher, World, build_world, fresh_postgres_url, make_context

from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import BackupJob, JobSession
from cloudkeep.server.scheduling.schedule import next_run, validate_schedule
from cloudkeep.server.scheduling.scheduler import start_scheduler, tick

T0 = datetime(2026, 11, 26, 21, 0, tzinfo=UTC)  # a Thursday


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ctx(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerContext]:
    """Every scheduler test runs on SQLite (embedded) and on PostgreSQL (scale-out)."""
    url = fresh_postgres_url(request.getfixturevalue("postgres")) if request.param == "postgresql" else None
    context = make_context(tmp_path, url)
    yield context
    context.close()


@pytest.fixture
def world(ctx: ServerContext, tmp_path: Path) -> World:
    return build_world(ctx, tmp_path / "lab", machines=2)


def next_run_at(ctx: ServerContext, job_id: str) -> datetime | None:
    with ctx.db() as db:
        job = db.get(BackupJob, job_id)
        assert job is not None
        value = job.next_run_at
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def sessions(ctx: ServerContext, job_id: str) -> list[JobSession]:
    with ctx.db() as db:
        stmt = select(JobSession).where(JobSession.job_id == job_id).order_by(JobSession.created_at)
        found = list(db.scalars(stmt))
        for session in found:
            _ = session.tasks  # load while attached
        return found


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_daily_job_runs_once_at_its_time(ctx: ServerContext, world: World) -> None:
    fake = FakeDispatcher(ctx)
    job_id = world.add_job(schedule={"type": "daily", "time": "22:00"})
    assert tick(ctx, T0, dispatcher=fake, wait=True) == []  # first sight: computes the next run only
    assert next_run_at(ctx, job_id) == T0 + timedelta(hours=1)
    assert tick(ctx, T0 + timedelta(minutes=59), dispatcher=fake, wait=True) == []
    started = tick(ctx, T0 + timedelta(hours=1), dispatcher=fake, wait=True)
    assert len(started) == 1
    assert tick(ctx, T0 + timedelta(hours=1, seconds=30), dispatcher=fake, wait=True) == []
    (session,) = sessions(ctx, job_id)
    assert (session.trigger, session.state, session.attempt) == ("schedule", "success", 1)
    assert next_run_at(ctx, job_id) == T0 + timedelta(days=1, hours=1)


def test_disabled_job_and_manual_only_job_never_start(ctx: ServerContext, world: World) -> None:
    fake = FakeDispatcher(ctx)
    manual = world.add_job("manual")
    off = world.add_job("off", schedule={"type": "periodic", "every_minutes": 5}, enabled=False)
    for minute in range(0, 30, 5):
        assert tick(ctx, T0 + timedelta(minutes=minute), dispatcher=fake, wait=True) == []
    assert sessions(ctx, manual) == [] and sessions(ctx, off) == []


def test_missed_run_starts_once_at_start_up(ctx: ServerContext, world: World) -> None:
    fake = FakeDispatcher(ctx)
    job_id = world.add_job(schedule={"type": "periodic", "every_hours": 1})
    tick(ctx, T0, dispatcher=fake, wait=True)
    # the server was down for two days: 48 runs were missed; one runs at start-up
    later = T0 + timedelta(days=2, minutes=17)
    assert len(tick(ctx, later, dispatcher=fake, wait=True)) == 1
    assert tick(ctx, later + timedelta(seconds=1), dispatcher=fake, wait=True) == []
    (session,) = sessions(ctx, job_id)
    assert session.trigger == "missed"
    assert next_run_at(ctx, job_id) == T0 + timedelta(days=2, hours=1)


def test_missed_run_policy_skip(ctx: ServerContext, world: World) -> None:
    fake = FakeDispatcher(ctx)
    job_id = world.add_job(schedule={"type": "daily", "time": "22:00", "missed": "skip"})
    tick(ctx, T0, dispatcher=fake, wait=True)
    assert tick(ctx, T0 + timedelta(days=1, hours=5), dispatcher=fake, wait=True) == []
    assert sessions(ctx, job_id) == []
    assert next_run_at(ctx, job_id) == T0 + timedelta(days=2, hours=1)


def test_late_tick_outside_the_window_waits_for_the_window(ctx: ServerContext, world: World) -> None:
    fake = FakeDispatcher(ctx)
    job_id = world.add_job(
        schedule={"type": "daily", "time": "22:00", "window": {"start": "22:00", "end": "23:00"}}
    )
    tick(ctx, T0, dispatcher=fake, wait=True)
    assert tick(ctx, T0 + timedelta(hours=3), dispatcher=fake, wait=True) == []  # 00:00: window closed
    assert next_run_at(ctx, job_id) == T0 + timedelta(days=1, hours=1)  # tomorrow 22:00
    assert sessions(ctx, job_id) == []
    assert len(tick(ctx, T0 + timedelta(days=1, hours=1), dispatcher=fake, wait=True)) == 1


def test_failed_scheduled_run_is_retried_for_the_failed_machines_only(
    ctx: ServerContext, world: World
) -> None:
    fake = FakeDispatcher(ctx, fail={world.machine_ids[1]: "storage unreachable"})
    job_id = world.add_job(
        schedule={"type": "daily", "time": "22:00", "retries": {"count": 2, "delay_minutes": 10}}
    )
    tick(ctx, T0, dispatcher=fake, wait=True)
    tick(ctx, T0 + timedelta(hours=1), dispatcher=fake, wait=True)
    first = sessions(ctx, job_id)[0]
    assert first.state == "warning"
    retry_time = datetime.fromisoformat(first.stats["retry_at"])
    assert next_run_at(ctx, job_id) == retry_time
    # the retry is due ~10 minutes after the failure (real end time + delay)
    now = retry_time + timedelta(seconds=1)
    assert len(tick(ctx, now, dispatcher=fake, wait=True)) == 1
    second = sessions(ctx, job_id)[1]
    assert (second.trigger, second.attempt) == ("retry", 2)
    assert [t.machine_id for t in second.tasks] == [world.machine_ids[1]]
    # third attempt, then retries are exhausted and the regular schedule resumes
    third_at = datetime.fromisoformat(second.stats["retry_at"]) + timedelta(seconds=1)
    tick(ctx, third_at, dispatcher=fake, wait=True)
    third = sessions(ctx, job_id)[2]
    assert (third.trigger, third.attempt, third.state) == ("retry", 3, "failed")
    assert "retry_at" not in third.stats
    # retries count from the real end of each session; afterwards the regular schedule resumes
    assert next_run_at(ctx, job_id) == next_run(
        validate_schedule({"type": "daily", "time": "22:00"}), third_at
    )


def test_manual_run_is_not_retried(ctx: ServerContext, world: World) -> None:
    from cloudkeep.server.jobs import start_job

    fake = FakeDispatcher(ctx, fail={m: "boom" for m in world.machine_ids})
    job_id = world.add_job(
        schedule={"type": "daily", "time": "22:00", "retries": {"count": 3, "delay_minutes": 1}}
    )
    tick(ctx, T0, dispatcher=fake, wait=True)
    start_job(ctx, job_id, wait=True, dispatcher=fake)
    assert "retry_at" not in sessions(ctx, job_id)[0].stats
    assert next_run_at(ctx, job_id) == T0 + timedelta(hours=1)


def test_after_job_chain_starts_the_follower_once(ctx: ServerContext, world: World) -> None:
    fake = FakeDispatcher(ctx)
    first = world.add_job("first", schedule={"type": "daily", "time": "22:00"})
    second = world.add_job("second", schedule={"type": "after_job", "after_job": "first"})
    tick(ctx, T0, dispatcher=fake, wait=True)
    assert next_run_at(ctx, second) is None
    tick(ctx, T0 + timedelta(hours=1), dispatcher=fake, wait=True)
    wait_for(lambda: any(s.state == "success" for s in sessions(ctx, second)))
    (chained,) = sessions(ctx, second)
    assert chained.trigger == "chained"
    assert len(sessions(ctx, first)) == 1


def run_workers(ctx_factory, world: World, now: datetime, workers: int = 4) -> list[str]:  # type: ignore[no-untyped-def]
    """Several server workers (own contexts = own connection pools) tick at the same instant."""
    contexts = [ctx_factory() for _ in range(workers)]
    barrier = threading.Barrier(workers)
    started: list[str] = []
    lock = threading.Lock()

    def worker(c: ServerContext) -> None:
        barrier.wait()
        ids = tick(c, now, dispatcher=FakeDispatcher(c), wait=True)
        with lock:
            started.extend(ids)

    threads = [threading.Thread(target=worker, args=(c,)) for c in contexts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in contexts:
        c.close()
    return started


def test_exactly_once_across_workers(ctx: ServerContext, world: World, tmp_path: Path) -> None:
    url = ctx.settings.database_url  # None: the SQLite file under home
    job_id = world.add_job(schedule={"type": "periodic", "every_minutes": 10})
    tick(ctx, T0, dispatcher=FakeDispatcher(ctx), wait=True)
    for step in range(1, 4):
        started = run_workers(
            lambda: make_context(tmp_path, url), world, T0 + timedelta(minutes=10 * step), 5
        )
        assert len(started) == 1
    assert len(sessions(ctx, job_id)) == 3


def test_start_scheduler_ticks_in_the_background_with_an_injected_clock(
    ctx: ServerContext, world: World
) -> None:
    job_id = world.add_job(schedule={"type": "daily", "time": "22:00"})
    with ctx.db() as db:
        job = db.get(BackupJob, job_id)
        assert job is not None
        job.next_run_at = T0 - timedelta(days=1)  # missed while the server was down
    handle = start_scheduler(ctx, clock=lambda: T0, interval=0.05, dispatcher=FakeDispatcher(ctx))
    try:
        wait_for(lambda: any(s.state == "success" for s in sessions(ctx, job_id)))
    finally:
        handle.stop()
    assert [s.trigger for s in sessions(ctx, job_id)] == ["missed"]


def test_a_terminating_window_stops_a_scheduled_run_when_it_closes(ctx: ServerContext, world: World) -> None:
    """The runner's clock is injected: the window closes while both machines' backups still run."""
    from cloudkeep.server.jobs import start_job

    now = {"t": T0 + timedelta(hours=1, minutes=30)}  # 22:30, inside 22:00-23:00
    fake = FakeDispatcher(ctx, hold=set(world.machine_ids))
    schedule = {
        "type": "daily",
        "time": "22:00",
        "window": {"start": "22:00", "end": "23:00", "terminate": True},
    }
    job_id = world.add_job(schedule=schedule, options={"poll_slice_seconds": 0.05, "parallel_machines": 1})
    session_id = start_job(ctx, job_id, trigger="schedule", dispatcher=fake, clock=lambda: now["t"])
    wait_for(lambda: len(fake.kinds("backup")) == 1)
    now["t"] = T0 + timedelta(hours=2, minutes=1)  # 23:01: the window has closed
    wait_for(lambda: sessions(ctx, job_id)[0].state == "stopped")
    (session,) = sessions(ctx, job_id)
    assert session.reason.startswith("stopped: the backup window closed; 0 of 2")
    reasons = sorted(t.reason for t in session.tasks)
    assert reasons == [
        "stopped: the backup window closed",
        "stopped: the backup window closed before this machine started",
    ]
    assert len(fake.kinds("backup")) == 1  # the second machine never started
    # a manual run is never cut short by the window
    manual = start_job(ctx, job_id, wait=True, dispatcher=FakeDispatcher(ctx), clock=lambda: now["t"])
    assert [s.state for s in sessions(ctx, job_id) if s.id == manual] == ["success"]
    assert session_id == session.id


def test_window_terminate_must_be_boolean() -> None:
    from cloudkeep.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="terminate must be true or false"):
        validate_schedule({"type": "daily", "window": {"start": "22:00", "end": "23:00", "terminate": "yes"}})


def test_tick_starts_the_rescans_that_are_due(
    ctx: ServerContext, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rescan engine is replaced by recording fakes: only the hand-over is under test here."""
    from cloudkeep.server.scheduling import scheduler

    started: list[str] = []
    monkeypatch.setattr(scheduler, "due_rescans", lambda c, now: [world.group_id] if now >= T0 else [])
    monkeypatch.setattr(scheduler, "start_rescan", lambda c, gid, **kw: started.append(gid) or f"s-{gid}")
    assert tick(ctx, T0 - timedelta(minutes=1), dispatcher=FakeDispatcher(ctx)) == []
    assert tick(ctx, T0, dispatcher=FakeDispatcher(ctx)) == [f"s-{world.group_id}"]
    assert started == [world.group_id]
