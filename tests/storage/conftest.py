"""One ``store`` fixture parametrised over every backend: the conformance suite runs against each.

``file`` and ``memory`` are in-process; ``s3`` and ``s3-lock`` talk to the moto server over HTTP
(the latter on a bucket created with Object Lock); ``azure`` talks to Azurite.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from azure.storage.blob import BlobServiceClient

from cloudkeep.storage import ObjectStore, open_store
from cloudkeep.storage.memory import MemoryStore
from tests.support.peers import Azurite

BACKENDS = ["file", "memory", "s3", "s3-lock", "azure"]


def make_s3_bucket(aws_options: dict[str, str], name: str, *, lock: bool = False) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=aws_options["endpoint_url"],
        region_name=aws_options["region"],
        aws_access_key_id=aws_options["aws_access_key_id"],
        aws_secret_access_key=aws_options["aws_secret_access_key"],
    )
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)


def make_azure_container(azurite: Azurite, name: str) -> None:
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container(name)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str) -> Iterator[ObjectStore]:
    kind = request.param
    if kind == "file":
        opened = open_store(f"file://{tmp_path}/repo", fsync=False)
    elif kind == "memory":
        opened = open_store(f"memory://{unique_name}")
    elif kind.startswith("s3"):
        aws_options = request.getfixturevalue("aws_options")
        make_s3_bucket(aws_options, unique_name, lock=kind == "s3-lock")
        opened = open_store(
            f"s3://{unique_name}/some/prefix",
            multipart_threshold=6 * 2**20,
            multipart_chunk=5 * 2**20,
            **aws_options,
        )
    else:
        azurite = request.getfixturevalue("azurite")
        make_azure_container(azurite, unique_name)
        opened = open_store(
            f"azure://{unique_name}/some/prefix",
            connection_string=azurite.connection_string,
            max_single_put_size=4 * 2**20,
            max_block_size=2 * 2**20,
        )
    yield opened
    opened.close()
    if kind == "memory":
        MemoryStore.forget(unique_name)


@pytest.fixture
def random_key() -> str:
    return "k/" + uuid.uuid4().hex
