"""Two server workers (separate engines) on one PostgreSQL database start the same rescan at once."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from tests.server.rescan_support import RescanWorld
from tests.support.peers import Postgres

from cloudkeep.config import Settings
from cloudkeep.providers.local import Lab
from cloudkeep.server.context import ServerContext, open_context
from cloudkeep.server.db.models import DeploymentStep, DiscoveredMachine, JobSession
from cloudkeep.server.rescan import start_rescan

pytestmark = pytest.mark.postgres


@pytest.fixture
def database_url(postgres: Postgres) -> Iterator[str]:
    name = "ck_rescan_" + uuid.uuid4().hex[:8]
    admin = create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    yield postgres.url.rsplit("/", 1)[0] + "/" + name
    admin.dispose()


def test_concurrent_rescans_from_two_workers_join_one_session(
    tmp_path: Path, lab: Lab, database_url: str
) -> None:
    world = RescanWorld.create(tmp_path / "home", lab, database_url=database_url)
    other: ServerContext = open_context(Settings(home=tmp_path / "home", database_url=database_url))
    try:
        for i in range(3):
            world.linux(f"web{i}")
        results: list[str] = []
        barrier = threading.Barrier(2)

        def rescan(ctx: ServerContext) -> None:
            barrier.wait()
            results.append(start_rescan(ctx, world.group_id, deploy=False, wait=True))

        threads = [threading.Thread(target=rescan, args=(c,)) for c in (world.ctx, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)

        assert len(results) == 2 and results[0] == results[1]
        assert world.session(results[0]).state == "success"
        with world.ctx.db() as session:
            assert session.query(JobSession).count() == 1
            assert session.query(DiscoveredMachine).count() == 3
            assert session.query(DeploymentStep).count() == 9  # 3 machines x 3 checks
        assert {m.status for m in world.machines().values()} == {"ready"}
    finally:
        other.close()
        world.close()
