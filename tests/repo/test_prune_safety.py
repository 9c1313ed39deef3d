"""Prune never loses data: a backup at every step boundary of prune, prunes at every step boundary
of a backup (alive, or frozen past its lease), and concurrent maintenance.

Each test runs one interleaving deterministically through the ``cloudkeep.repo.steps`` seam: the
hook runs the other actor to completion at the chosen boundary. Time is the store's clock plus
injected offsets for prune; a frozen backup's session clock is a fake one.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import cloudkeep.repo.writer as writer_module
from cloudkeep.errors import ConfigurationError, ConflictError
from cloudkeep.repo import PruneResult, Repository, backup_files, prune
from cloudkeep.repo.lock import LOCK_KEY, MaintenanceBusyError, maintenance_lock
from cloudkeep.repo.steps import BACKUP_STEPS, PRUNE_STEPS, hooked
from cloudkeep.repo.writer import SessionExpiredError
from cloudkeep.storage import ObjectStore
from tests.repo.prune_world import HOUR, KIB, World, blob, store_now, write_files


class FakeClock:
    """Stands in for the backup's session clock, so a test can freeze a backup for hours."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def prepared(world: World, tmp: Path) -> tuple[datetime, dict[str, str]]:
    """Restore point A forgotten and its packs marked at ``t0``; restore point C still kept."""
    a = write_files(tmp / "A", {"a.bin": blob(1, 300 * KIB)})
    c = write_files(tmp / "C", {f"c{n}": blob(10 + n, 60 * KIB) for n in range(6)})
    ids = {"a": world.backup(a), "c": world.backup(c)}
    world.forget(ids["a"])
    t0 = store_now(world.store)
    assert prune(world.open(), now=t0).packs_marked > 0
    return t0, ids


def agent_source(tmp: Path) -> Path:
    """Blobs of the marked A, of C (soon marked), and new data: every way to depend on a pack."""
    return write_files(
        tmp / "B", {"a.bin": blob(1, 300 * KIB), "c1": blob(11, 60 * KIB), "n.bin": blob(99, 200 * KIB)}
    )


def keep_sessions_alive(world: World, seen: datetime) -> None:
    """What a live backup's heartbeats would have written by ``seen``."""
    repo = world.open()
    for info in world.store.list("sessions/"):
        repo.write_marker(info.key, {**repo.read_marker(info.key), "seen": seen.isoformat()})


def settle(world: World, t0: datetime, hours: tuple[int, ...]) -> None:
    """Later prunes (sweeps and marks), then the invariant, then a new backup and the invariant again."""
    for h in hours:
        prune(world.open(), now=t0 + h * HOUR)
    world.verify()
    world.backup(agent_source(world.root), hostname="later")
    for h in (hours[-1] + 2, hours[-1] + 4):
        prune(world.open(), now=t0 + h * HOUR)
    world.verify()


@pytest.mark.parametrize("boundary", PRUNE_STEPS)
def test_backup_at_every_prune_step(store: ObjectStore, tmp_path: Path, boundary: str) -> None:
    world = World(store, tmp_path)
    t0, ids = prepared(world, tmp_path)
    world.backup(write_files(tmp_path / "C", {"c5": blob(15, 60 * KIB)}))
    world.forget(ids["c"])  # C's pack is now a sixth used: the prune under test repacks and marks it
    source = agent_source(tmp_path)
    seen: list[str] = []

    def backup_here(name: str) -> None:
        seen.append(name)
        if name == boundary and seen.count(name) == 1:
            world.backup(source, hostname="agent")  # loads the index, dedups, commits: all in this pause

    with hooked(backup_here):
        result = prune(world.open(), now=t0 + 2 * HOUR)
    assert boundary in seen, f"prune never reached {boundary}"
    assert result.packs_deleted > 0 and result.packs_repacked > 0
    settle(world, t0, (4, 6, 8))


@pytest.mark.parametrize("frozen", [False, True], ids=["alive", "frozen"])
@pytest.mark.parametrize("boundary", BACKUP_STEPS)
def test_prunes_at_every_backup_step(
    store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, boundary: str, frozen: bool
) -> None:
    world = World(store, tmp_path)
    t0, ids = prepared(world, tmp_path)
    clock = FakeClock()
    monkeypatch.setattr(writer_module, "session_clock", clock)
    source = agent_source(tmp_path)
    done: list[str] = []

    def prunes_here(name: str) -> None:
        if name != boundary or done:
            return
        done.append(name)
        world.forget(ids["c"])  # the agent may already have deduplicated against C's packs
        keep_sessions_alive(world, t0 + 2 * HOUR)
        prune(world.open(), now=t0 + 2 * HOUR)  # sweeps A's packs, marks C's
        if frozen:
            clock.now += 2 * 3600  # the agent is stopped for two hours: no heartbeat, lease over
        else:
            keep_sessions_alive(world, t0 + 4 * HOUR)
        prune(world.open(), now=t0 + 4 * HOUR)

    outcome = "committed"
    with hooked(prunes_here):
        try:
            world.backup(source, hostname="agent")
        except SessionExpiredError:
            outcome = "expired"
    assert done, f"the backup never reached {boundary}"
    if not frozen or boundary == "backup:session-ended":
        assert outcome == "committed"
    else:  # it may have deduplicated against packs prune swept: it must not report success
        assert outcome == "expired"
    settle(world, t0, (6, 8, 10))


def test_frozen_backup_does_not_revive_its_session(
    store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prune removed the stale marker; the resumed backup must not write it (or an index) again."""
    world = World(store, tmp_path)
    t0, _ = prepared(world, tmp_path)
    clock = FakeClock()
    monkeypatch.setattr(writer_module, "session_clock", clock)

    done = threading.Lock()

    def freeze(name: str) -> None:
        if name == "backup:pack-uploaded" and done.acquire(blocking=False):  # first upload only
            prune(world.open(), now=t0 + 4 * HOUR)  # stale at once: removed
            clock.now += 60  # within the lease on its own clock, yet prune saw it stale
            index_files.update(i.key for i in store.list(""))

    index_files: set[str] = set()
    with hooked(freeze), pytest.raises(SessionExpiredError):
        world.backup(agent_source(tmp_path), hostname="agent")
    assert list(store.list("sessions/")) == []
    written = {i.key for i in store.list("") if i.key.startswith(("index/", "snapshots/"))} - index_files
    assert written == set()  # no index file, no manifest from the revoked session
    settle(world, t0, (6, 8))


def test_second_prune_is_refused_while_one_runs(store: ObjectStore, tmp_path: Path) -> None:
    world = World(store, tmp_path)
    t0, _ = prepared(world, tmp_path)
    refused: list[BaseException] = []

    def second_prune(name: str) -> None:
        if name == "prune:loaded" and not refused:
            with pytest.raises(ConflictError) as caught:
                prune(world.open(), now=t0 + 2 * HOUR)
            refused.append(caught.value)

    with hooked(second_prune):
        prune(world.open(), now=t0 + 2 * HOUR)
    assert refused and "maintenance" in str(refused[0])
    assert store.stat(LOCK_KEY) is None  # released


def test_stale_maintenance_lock_is_taken_over(store: ObjectStore, tmp_path: Path) -> None:
    world = World(store, tmp_path)
    t0, _ = prepared(world, tmp_path)
    with maintenance_lock(world.open(), "a killed prune", now=t0, grace=HOUR):
        with pytest.raises(ConflictError):
            prune(world.open(), now=t0 + timedelta(minutes=30))
        prune(world.open(), now=t0 + 2 * HOUR)  # not refreshed for two hours: abandoned
    world.verify()


def test_a_machines_prune_beside_a_running_one_is_skipped_not_failed(
    store: ObjectStore, tmp_path: Path
) -> None:
    """Every machine of a job prunes after its retention; two finishing together must not turn the
    session into a warning: the second prune is skipped (the first reclaims for both)."""
    from cloudkeep.machine.tasks import _prune_unless_busy

    world = World(store, tmp_path)
    t0, _ = prepared(world, tmp_path)
    with maintenance_lock(world.open(), "another machine's prune", now=t0, grace=HOUR):
        with pytest.raises(MaintenanceBusyError):
            prune(world.open(), now=t0 + timedelta(minutes=30))
        _prune_unless_busy(world.open())  # the real clock is within the lock's grace
        assert store.stat(LOCK_KEY) is not None  # the holder's lock is left alone
    world.verify()


def test_grace_must_exceed_the_session_lease(repo: Repository) -> None:
    with pytest.raises(ConfigurationError):
        prune(repo, grace=timedelta(minutes=30))


def test_repository_reused_across_a_sweep(store: ObjectStore, tmp_path: Path) -> None:
    """A long-lived Repository whose index predates a whole mark-and-sweep must not deduplicate
    against the swept packs: the sweep removed the index files it had loaded, so it reloads."""
    world = World(store, tmp_path)
    source = write_files(tmp_path / "A", {"a.bin": blob(1, 300 * KIB)})
    agent = world.open()
    first = backup_files(agent, [source], hostname="agent")
    world.forget(first.id)
    t0 = store_now(store)
    prune(world.open(), now=t0)
    assert prune(world.open(), now=t0 + 2 * HOUR).packs_deleted > 0
    again = backup_files(agent, [source], hostname="agent")  # same object, index loaded before it all
    world.record(again.id, source)
    assert again.stats["bytes_new"] >= 300 * KIB
    world.verify()


def test_prune_taken_over_while_paused_stops(
    store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prune paused past its lease finds its lock taken over and stops before writing an index
    from its old view (which would name packs the other prune deleted)."""
    world = World(store, tmp_path)
    t0, ids = prepared(world, tmp_path)
    world.forget(ids["c"])
    clock = FakeClock()
    monkeypatch.setattr(writer_module, "session_clock", clock)
    taken: list[PruneResult] = []
    paused = threading.Lock()

    def pause(name: str) -> None:
        if name == "prune:loaded" and paused.acquire(blocking=False):  # the first prune only
            clock.now += 2 * 3600
            taken.append(prune(world.open(), now=t0 + 4 * HOUR))  # the stale lock is taken over

    with hooked(pause), pytest.raises(ConflictError, match="paused"):
        prune(world.open(), now=t0 + 2 * HOUR)
    assert taken and taken[0].packs_deleted > 0
    settle(world, t0, (6, 8, 10))
