"""Fixtures for the server and CLI tests: a state store on SQLite or on PostgreSQL (one
fresh database per test), seeded catalog objects, API tokens and a live uvicorn server."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn
from fastapi.testclient import TestClient
from tests.support.peers import free_port, port_open

from cloudkeep.config import Settings
from cloudkeep.server.api import create_app
from cloudkeep.server.context import ServerContext, open_context
from cloudkeep.server.db.models import DiscoveredMachine
from cloudkeep.server.services import credentials, protection_groups, repositories, tokens
from cloudkeep.server.services.schemas import (
    CredentialCreate,
    ProtectionGroupCreate,
    RepositoryCreate,
    TokenCreate,
)

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _psycopg_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def pg_database(postgres: Any) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped afterwards)."""
    name = "ck_" + uuid.uuid4().hex[:16]
    admin = _psycopg_dsn(postgres.url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres.url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_database")
        return url
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(home=tmp_path / "home", database_url=database_url)


@pytest.fixture
def make_ctx(settings: Settings) -> Iterator[Callable[[], ServerContext]]:
    """Open more contexts on the same database: each one is a separate server worker."""
    opened: list[ServerContext] = []

    def make() -> ServerContext:
        ctx = open_context(settings)
        opened.append(ctx)
        return ctx

    yield make
    for ctx in opened:
        ctx.close()


@pytest.fixture
def ctx(make_ctx: Callable[[], ServerContext]) -> ServerContext:
    return make_ctx()


@dataclass
class Seeded:
    credential: str
    distribution: str
    backup: str
    group: str
    lab_dir: Path


def seed(ctx: ServerContext, lab_dir: Path, *, suffix: str = "") -> Seeded:
    """A local credential, a distribution and a backup repository, and a protection group."""
    cred = credentials.create_credential(
        ctx,
        CredentialCreate(
            name=f"lab{suffix}",
            provider="local",
            options={"lab_dir": str(lab_dir)},
            secret={"api_secret": "s3cr3t-credential-value"},  # type: ignore[dict-item]
        ),
    )
    dist = repositories.create_repository(
        ctx,
        RepositoryCreate(name=f"dist{suffix}", purpose="distribution", credential=cred.name, location="dist"),
    )
    backup = repositories.create_repository(
        ctx,
        RepositoryCreate(
            name=f"main{suffix}",
            credential=cred.name,
            location="backups",
            password="correct-horse-battery",  # type: ignore[arg-type]
            initialize=False,
        ),
    )
    group = protection_groups.create_group(
        ctx,
        ProtectionGroupCreate(
            name=f"g{suffix or '1'}", credential=cred.name, distribution_repository=dist.name
        ),
    )
    return Seeded(cred.name, dist.name, backup.name, group.name, lab_dir)


@pytest.fixture
def seeded(ctx: ServerContext, tmp_path: Path) -> Seeded:
    return seed(ctx, tmp_path / "lab")


def add_machine(ctx: ServerContext, group_name: str, name: str, *, status: str = "deployed") -> str:
    """Insert a discovered machine directly: an in-process stand-in for rescan, which is tested elsewhere."""
    from sqlalchemy import select

    from cloudkeep.server.db.models import ProtectionGroup

    with ctx.db() as session:
        group = session.scalar(select(ProtectionGroup).where(ProtectionGroup.name == group_name))
        assert group is not None
        machine = DiscoveredMachine(
            protection_group_id=group.id, cloud_id=f"i-{name}", name=name, platform="linux", status=status
        )
        session.add(machine)
        session.flush()
        return machine.id


@pytest.fixture
def admin_token(ctx: ServerContext) -> str:
    return tokens.create_token(ctx, TokenCreate(name="admin-token", scope="admin")).token


@pytest.fixture
def reader_token(ctx: ServerContext) -> str:
    return tokens.create_token(ctx, TokenCreate(name="reader-token", scope="read-only")).token


@pytest.fixture
def api(ctx: ServerContext, admin_token: str) -> Iterator[TestClient]:
    """The API in-process, authenticated as an admin."""
    with TestClient(create_app(ctx), headers={"Authorization": f"Bearer {admin_token}"}) as client:
        yield client


@dataclass
class LiveServer:
    url: str
    server: uvicorn.Server
    thread: threading.Thread


@pytest.fixture
def live_server(ctx: ServerContext) -> Iterator[LiveServer]:
    """A real uvicorn server on a loopback port, serving ``create_app(ctx)``."""
    port = free_port()
    config = uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not port_open(port):
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn exited at start"
        time.sleep(0.05)
    yield LiveServer(f"http://127.0.0.1:{port}", server, thread)
    server.should_exit = True
    thread.join(timeout=10)
