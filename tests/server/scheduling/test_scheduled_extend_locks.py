"""The scheduler runs ``extend-locks`` for every immutable repository at most once a generation, as a
maintenance session (S3 on the moto server; the server's clock injected with ``use_clock``).

Server lock requests per day for N referenced packs: N PutObjectRetention per generation G, i.e.
N / G a day (counted on the server's own client below), and none on the days in between.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from tests.repo.conftest import write_tree
from tests.support.peers import MotoServer

from cloudkeep.compat import UTC
from cloudkeep.config import Settings
from cloudkeep.repo import Repository, backup_files
from cloudkeep.server import leases
from cloudkeep.server.clock import use_clock
from cloudkeep.server.context import ServerContext, open_context
from cloudkeep.server.db.models import JobSession
from cloudkeep.server.scheduling import locks
from cloudkeep.server.scheduling.scheduler import tick
from cloudkeep.server.services import credentials, repositories
from cloudkeep.server.services.schemas import CredentialCreate, RepositoryCreate
from cloudkeep.storage import open_store
from cloudkeep.storage.s3 import S3Store

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
PASSWORD = "correct-horse-battery"
G = 7


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ServerContext]:
    opened = open_context(Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'state.db'}"))
    yield opened
    opened.close()


class Retentions:
    """PutObjectRetention requests of every S3 client made while it is installed (the server's)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count: Counter[str] = Counter()
        real = S3Store.__init__

        def counting(store: S3Store, *args: Any, **kwargs: Any) -> None:
            real(store, *args, **kwargs)
            store.client.meta.events.register("before-call.s3.PutObjectRetention", self._seen)

        monkeypatch.setattr(S3Store, "__init__", counting)

    def _seen(self, **_: Any) -> None:
        self.count["PutObjectRetention"] += 1

    def take(self) -> int:
        n, self.count = self.count["PutObjectRetention"], Counter()
        return n


def _extend_sessions(ctx: ServerContext) -> list[tuple[str, str]]:
    with ctx.db() as db:
        rows = db.scalars(
            select(JobSession).where(JobSession.kind == "maintenance").order_by(JobSession.created_at)
        )
        return [(r.stats["operation"], r.stats["actor"], r.state) for r in rows]


def test_scheduler_extends_locks_once_per_generation_as_a_maintenance_session(
    ctx: ServerContext,
    moto_server: MotoServer,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = {"endpoint_url": moto_server.endpoint, "region": "us-east-1"}
    secret = {k: SecretStr(v) for k, v in KEYS.items()}
    credentials.create_credential(
        ctx, CredentialCreate(name="aws", provider="aws", secret=secret, options=options)
    )
    repositories.create_repository(
        ctx,
        RepositoryCreate(
            name="locked", credential="aws", location=unique_name, password=SecretStr(PASSWORD),
            immutability_days=30, options={"pack_size": 2**20},
        ),
    )  # fmt: skip
    repositories.create_repository(  # not immutable: never extended
        ctx,
        RepositoryCreate(
            name="plain", credential="aws", location=unique_name + "-plain", password=SecretStr(PASSWORD),
            options={"pack_size": 2**20},
        ),
    )  # fmt: skip
    store = open_store(f"s3://{unique_name}/", endpoint_url=moto_server.endpoint, region="us-east-1", **KEYS)
    t0 = datetime.now(UTC)
    machine = Repository.open(store, PASSWORD, writer_prefix="writers/m1/")
    backup_files(machine, [write_tree(tmp_path / "src")], hostname="m1", retain_until=t0 + timedelta(days=30))
    packs = sum(1 for _ in store.list("writers/m1/data/"))
    assert packs
    retentions = Retentions(monkeypatch)

    per_day = []
    for day in range(2 * G + 1):  # the scheduler ticks many times a day; count each day's requests
        for hour in (0, 6, 12, 18):
            now = t0 + timedelta(days=day, hours=hour)
            with use_clock(lambda now=now: now):
                tick(ctx, now, wait=True)
        per_day.append(retentions.take())
    assert per_day == [packs if day % G == 0 else 0 for day in range(2 * G + 1)]  # N / G a day
    assert _extend_sessions(ctx) == [("extend-locks", "scheduler", "success")] * 3
    store.close()


def test_a_failing_repository_is_retried_daily_not_every_tick(
    ctx: ServerContext, moto_server: MotoServer, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"endpoint_url": moto_server.endpoint, "region": "us-east-1"}
    secret = {k: SecretStr(v) for k, v in KEYS.items()}
    credentials.create_credential(
        ctx, CredentialCreate(name="aws", provider="aws", secret=secret, options=options)
    )
    repositories.create_repository(
        ctx,
        RepositoryCreate(
            name="locked", credential="aws", location=unique_name, password=SecretStr(PASSWORD),
            immutability_days=30,
        ),
    )  # fmt: skip
    store = open_store(f"s3://{unique_name}/", endpoint_url=moto_server.endpoint, region="us-east-1", **KEYS)
    store.put("locks/horizon", b"not a sealed horizon")  # the step fails: IntegrityError
    store.close()
    t0 = datetime.now(UTC)
    for minutes in (0, 15, 60, 23 * 60, 24 * 60 + 1):
        now = t0 + timedelta(minutes=minutes)
        with use_clock(lambda now=now: now):
            tick(ctx, now, wait=True)
            assert leases.holder_of(ctx, locks.lease_name(_repository_id(ctx))) == ctx.server_id
    assert _extend_sessions(ctx) == [("extend-locks", "scheduler", "failed")] * 2


def _repository_id(ctx: ServerContext) -> str:
    with ctx.db() as db:
        from cloudkeep.server.db.models import Repository as RepositoryRow

        return str(db.scalar(select(RepositoryRow.id).where(RepositoryRow.name == "locked")))
