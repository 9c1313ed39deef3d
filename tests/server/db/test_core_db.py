"""Migrations and leases on SQLite and on a real PostgreSQL, including workers racing each other."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect

from cloudkeep.config import Settings
from cloudkeep.server import leases
from cloudkeep.server.context import ServerContext, make_engine
from cloudkeep.server.db.migrate import HEAD, current_revision, schema_drift, script_head, upgrade
from cloudkeep.server.db.models import Base


def test_upgrade_reaches_head_and_matches_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        upgrade(engine)  # idempotent
        assert current_revision(engine) == HEAD == script_head()
        assert set(inspect(engine).get_table_names()) >= set(Base.metadata.tables)
        assert schema_drift(engine) == [], (
            "models changed: run `python -m cloudkeep.server.db.migrate regenerate`"
        )
    finally:
        engine.dispose()


def test_upgrade_of_a_database_with_data_keeps_it(database_url: str) -> None:
    """A server upgraded in place: revision 0003 copies ``protection_groups`` on SQLite (batch mode),
    which other tables reference — with foreign keys enforced that copy failed on any real catalog."""
    from alembic import command
    from sqlalchemy import text

    from cloudkeep.server.db.migrate import alembic_config

    engine = make_engine(database_url)
    at = "2026-12-01 00:00:00"
    try:
        with engine.connect() as conn:
            command.upgrade(alembic_config(conn), "0002")
            conn.execute(
                text(
                    "INSERT INTO credentials (id, name, provider, secret, options, description, created_at) "
                    "VALUES ('c1', 'lab', 'local', '\"x\"', '{}', '', :at)"
                ),
                {"at": at},
            )
            conn.execute(
                text(
                    "INSERT INTO repositories (id, name, purpose, credential_id, location, immutability_days,"
                    " options, created_at) VALUES ('r1', 'dist', 'distribution', 'c1', '/d', 0, '{}', :at)"
                ),
                {"at": at},
            )
            conn.execute(
                text(
                    "INSERT INTO protection_groups (id, name, description, credential_id,"
                    " distribution_repository_id, regions, machine_ids, include_tags, exclude_ids,"
                    " exclude_tags, auto_update, on_disappear, enabled, created_at)"
                    " VALUES ('g1', 'lab', '', 'c1', 'r1', '[]', '[]', '{}', '[]', '{}', true, 'keep',"
                    " true, :at)"
                ),
                {"at": at},
            )
            conn.execute(
                text(  # a row referencing the group: what made the table copy fail
                    "INSERT INTO machines (id, protection_group_id, cloud_id, name, platform, region,"
                    " cloud_state, tags, facts, status, status_reason, created_at) VALUES ('m1', 'g1', 'vm1',"
                    " 'vm1', 'linux', 'lab', 'running', '{}', '{}', 'deployed', '', :at)"
                ),
                {"at": at},
            )
            if engine.dialect.name == "sqlite":  # what an interrupted copy leaves (DDL commits at once)
                conn.execute(text("CREATE TABLE _alembic_tmp_protection_groups (id VARCHAR(32))"))
            conn.commit()
        upgrade(engine)
        assert current_revision(engine) == HEAD
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, install_python FROM protection_groups")).all()
            assert [(r[0], bool(r[1])) for r in rows] == [("g1", False)]
            assert conn.execute(text("SELECT protection_group_id FROM machines")).scalar() == "g1"
            # a machine registered before agent levels existed: none recorded, so it counts as level 1
            assert conn.execute(text("SELECT agent_level FROM machines")).scalar() is None
            if engine.dialect.name == "sqlite":  # and the pooled connection enforces foreign keys again
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_workers_migrating_at_once_all_succeed(database_url: str) -> None:
    """Four workers start together on an empty database; the lock lets exactly one create the schema."""
    engines = [make_engine(database_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))

    def start(engine: object) -> str | None:
        barrier.wait()
        upgrade(engine)  # type: ignore[arg-type]
        return current_revision(engine)  # type: ignore[arg-type]

    try:
        with ThreadPoolExecutor(len(engines)) as pool:
            assert list(pool.map(start, engines)) == [HEAD] * len(engines)
    finally:
        for engine in engines:
            engine.dispose()


def test_lease_acquire_renew_release(ctx: ServerContext) -> None:
    assert leases.acquire(ctx, "scheduler", "worker-a", ttl_seconds=60)
    assert not leases.acquire(ctx, "scheduler", "worker-b", ttl_seconds=60)
    assert leases.acquire(ctx, "scheduler", "worker-a", ttl_seconds=60)  # renewal by the holder
    assert leases.holder_of(ctx, "scheduler") == "worker-a"
    assert not leases.release(ctx, "scheduler", "worker-b")
    assert leases.release(ctx, "scheduler", "worker-a")
    assert leases.holder_of(ctx, "scheduler") is None
    assert leases.acquire(ctx, "scheduler", "worker-b", ttl_seconds=60)


def test_expired_lease_can_be_taken_over(ctx: ServerContext) -> None:
    assert leases.acquire(ctx, "rescan:g1", "worker-a", ttl_seconds=-1)  # already expired
    assert leases.holder_of(ctx, "rescan:g1") is None
    assert leases.acquire(ctx, "rescan:g1", "worker-b", ttl_seconds=60)
    assert leases.holder_of(ctx, "rescan:g1") == "worker-b"
    assert leases.purge_expired(ctx) == 0


def _race(contexts: list[ServerContext], attempt: Callable[[ServerContext, str], bool]) -> list[bool]:
    barrier = threading.Barrier(len(contexts))

    def run(index: int) -> bool:
        barrier.wait()
        return attempt(contexts[index], f"worker-{index}")

    with ThreadPoolExecutor(len(contexts)) as pool:
        return list(pool.map(run, range(len(contexts))))


@pytest.mark.postgres
def test_racing_workers_exactly_one_wins_on_postgres(
    pg_database: str, tmp_path: Path, make_pg_contexts: Callable[[int], list[ServerContext]]
) -> None:
    """Eight workers (separate engines) race for a fresh lease, an expired one, and a one-off claim."""
    contexts = make_pg_contexts(8)
    due = datetime(2026, 1, 1, 2, 0, tzinfo=UTC).isoformat()
    for round_ in range(5):
        fresh = _race(contexts, lambda c, me, r=round_: leases.acquire(c, f"fresh-{r}", me, ttl_seconds=60))
        assert fresh.count(True) == 1
        assert leases.acquire(contexts[0], f"stale-{round_}", "gone-worker", ttl_seconds=-5)
        stale = _race(contexts, lambda c, me, r=round_: leases.acquire(c, f"stale-{r}", me, ttl_seconds=60))
        assert stale.count(True) == 1
        claims = _race(contexts, lambda c, me, r=round_: leases.claim_once(c, f"job:{r}@{due}", me))
        assert claims.count(True) == 1


@pytest.fixture
def make_pg_contexts(pg_database: str, tmp_path: Path) -> Iterator[Callable[[int], list[ServerContext]]]:
    from cloudkeep.server.context import open_context

    opened: list[ServerContext] = []

    def make(count: int) -> list[ServerContext]:
        settings = Settings(home=tmp_path / "home", database_url=pg_database)
        opened.extend(open_context(settings) for _ in range(count))
        return opened

    yield make
    for ctx in opened:
        ctx.close()


def test_sqlite_engine_is_wal(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/x.db")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()


def test_workers_opening_a_fresh_state_store_agree(settings: Settings) -> None:
    """Four workers open the same empty database and key folder at once: one server id, one signing key."""
    from cloudkeep.server.context import open_context

    barrier = threading.Barrier(4)

    def start(_: int) -> ServerContext:
        barrier.wait()
        return open_context(settings)

    with ThreadPoolExecutor(4) as pool:
        contexts = list(pool.map(start, range(4)))
    try:
        assert len({c.server_id for c in contexts}) == 1
        assert len({c.public_key_b64 for c in contexts}) == 1
        assert len({c.secrets.key_id for c in contexts}) == 1
        assert oct(settings.effective_master_key_file.stat().st_mode & 0o777) == "0o600"
    finally:
        for ctx in contexts:
            ctx.close()
