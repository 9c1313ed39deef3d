"""Fixtures for the provider tests: one ``queue_service`` per implementation for the conformance suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudkeep.providers.base import QueueService
from tests.support.peers import Azurite, MotoServer

QUEUE_KINDS = ["local", "sqs", "azure"]


def _local(tmp_path: Path, request: pytest.FixtureRequest) -> QueueService:
    from cloudkeep.providers.local.queues import LocalQueueService

    return LocalQueueService(tmp_path / "queues.sqlite3")


def _sqs(tmp_path: Path, request: pytest.FixtureRequest) -> QueueService:
    from cloudkeep.providers.aws.provider import create_aws_provider

    moto: MotoServer = request.getfixturevalue("moto_server")
    credential = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    options = {"endpoint_url": moto.endpoint, "region": "us-east-1", "machine_credentials": credential}
    return create_aws_provider(credential, options).queues


def _azure(tmp_path: Path, request: pytest.FixtureRequest) -> QueueService:
    from cloudkeep.providers.azure.queues import AzureQueueService

    azurite: Azurite = request.getfixturevalue("azurite")
    return AzureQueueService(azurite.connection_string)


_FACTORIES: dict[str, Callable[[Path, pytest.FixtureRequest], QueueService]] = {
    "local": _local,
    "sqs": _sqs,
    "azure": _azure,
}


@pytest.fixture(params=QUEUE_KINDS)
def queue_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueService]:
    yield _FACTORIES[request.param](tmp_path, request)
