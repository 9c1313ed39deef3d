"""Session-wide real peers. Each starts on first use and stops when the test run ends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.peers import Azurite, MotoServer, Postgres

pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    peer = MotoServer.start()
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    peer = Azurite.start()
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    peer = Postgres.start()
    yield peer
    peer.stop()


@pytest.fixture
def aws_options(moto_server: MotoServer) -> dict[str, str]:
    """Credential + endpoint options for boto3 against the moto server (test keys only)."""
    return {
        "endpoint_url": moto_server.endpoint,
        "region": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }


@pytest.fixture
def unique_name() -> str:
    """A name unique to this test, for buckets, containers and queues on shared peers."""
    return "ck" + uuid.uuid4().hex[:12]
