"""The database pool is sized from the server's settings, and PostgreSQL's limit is checked.

Real PostgreSQL (the test peer runs with max_connections=200).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.pool import QueuePool
from tests.server.jobs_fakes import fresh_postgres_url

from cloudkeep.config import Settings
from cloudkeep.server.context import ServerContext, open_context
from cloudkeep.server.db.pool import (
    check_max_connections,
    max_connections_warning,
    pool_size,
    required_max_connections,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def small(tmp_path: Path, postgres: Any) -> Iterator[ServerContext]:
    settings = Settings(home=tmp_path, database_url=fresh_postgres_url(postgres), parallel_machines=6,
                        rescan_concurrency=2)  # fmt: skip
    ctx = open_context(settings)
    yield ctx
    ctx.close()


def test_the_pool_follows_parallel_machines(small: ServerContext) -> None:
    pool = small.engine.pool
    assert isinstance(pool, QueuePool)
    expected = pool_size(small.settings)
    assert (expected.size, expected.overflow) == (6 + 8, 6 + 2)
    assert (pool.size(), pool._max_overflow) == (expected.size, expected.overflow)


def test_every_thread_the_settings_allow_gets_a_connection_at_once(small: ServerContext) -> None:
    """parallel_machines tasks, fallbacks and rescans all in a transaction together: none waits out
    the pool timeout."""
    wanted = pool_size(small.settings).size + pool_size(small.settings).overflow
    barrier = threading.Barrier(wanted, timeout=30)
    pids: list[int] = []
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            with small.engine.connect() as conn:
                pids.append(int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one()))
                barrier.wait()  # every connection is checked out at this moment
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hold) for _ in range(wanted)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and len(set(pids)) == wanted


def test_the_server_says_when_postgresql_allows_too_few_connections(small: ServerContext) -> None:
    assert check_max_connections(small.engine, small.settings, processes=2) is None  # 2 * 23 + 3 <= 200

    fleet = Settings(home=small.settings.home, parallel_machines=64, rescan_concurrency=16)
    assert required_max_connections(fleet, 2) == 2 * (72 + 80 + 1) + 3
    warning = check_max_connections(small.engine, fleet, processes=2)
    assert warning is not None
    assert "PostgreSQL allows 200 connections" in warning and "at least 309" in warning


def test_sqlite_has_no_connection_limit(tmp_path: Path) -> None:
    ctx = open_context(Settings(home=tmp_path))
    try:
        assert check_max_connections(ctx.engine, ctx.settings, processes=64) is None
    finally:
        ctx.close()
    assert max_connections_warning(ctx.settings, 1, 100) is None  # 32 + 8 + 32 + 16 + 1 + 3 = 92
