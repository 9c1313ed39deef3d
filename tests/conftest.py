"""Session-wide real peers. Each starts on first use and stops when the test run ends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.peers import Azurite, MotoServer, Postgres
from tests.support.s3_standin import S3CompatStandin
from tests.support.tls import TlsFiles, make_self_signed

pytest_plugins = ["tests.support.fixtures", "tests.support.tmpfs"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test``: whole modules to a worker), the modules holding end-to-end
    scenarios (marked ``slow``) are handed out first, so the long ones run beside the many short
    ones instead of alone at the end. Order within a module is kept; a plain run is left as is."""
    if not hasattr(config, "workerinput"):
        return
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow)  # stable


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


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A self-signed certificate for HTTPS stand-ins (clients trust it through its file)."""
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def standin(moto_server: MotoServer, tls_files: TlsFiles) -> Iterator[S3CompatStandin]:
    """A less capable S3-compatible store over HTTPS in front of moto: tests switch its quirks on
    (see tests/support/s3_standin.py)."""
    proxy = S3CompatStandin(moto_server.endpoint, tls=tls_files)
    yield proxy
    proxy.close()
