"""One ``store`` fixture parametrised over every backend: the conformance suite runs against each.

``file`` and ``memory`` are in-process; ``s3`` and ``s3-lock`` talk to the moto server over HTTP
(the latter on a bucket created with Object Lock), ``s3-https`` to a second moto server over TLS;
``azure`` talks to Azurite, ``azure-https`` to a second Azurite over TLS.

``s3-env`` runs the same suite against any store named by the environment, unchanged:
``CLOUDKEEP_TEST_S3_URL`` (``s3://bucket/prefix``, an existing bucket the suite may fill),
``CLOUDKEEP_TEST_S3_ENDPOINT``, ``CLOUDKEEP_TEST_S3_REGION``, ``CLOUDKEEP_TEST_S3_KEY_ID``,
``CLOUDKEEP_TEST_S3_SECRET`` and optionally ``CLOUDKEEP_TEST_S3_CA_BUNDLE``. Without
``CLOUDKEEP_TEST_S3_URL`` that parameter is not generated.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from azure.storage.blob import BlobServiceClient

from cloudkeep.storage import ObjectStore, open_store
from cloudkeep.storage.memory import MemoryStore
from tests.support.peers import Azurite, MotoServer

BACKENDS = ["file", "memory", "s3", "s3-lock", "s3-https", "azure", "azure-https"]
if os.environ.get("CLOUDKEEP_TEST_S3_URL"):
    BACKENDS.append("s3-env")


def env_s3_options() -> dict[str, Any]:
    """Options for the store named by ``CLOUDKEEP_TEST_S3_*`` (see the module docstring)."""
    options: dict[str, Any] = {
        "endpoint_url": os.environ.get("CLOUDKEEP_TEST_S3_ENDPOINT") or None,
        "region": os.environ.get("CLOUDKEEP_TEST_S3_REGION", "us-east-1"),
        "aws_access_key_id": os.environ.get("CLOUDKEEP_TEST_S3_KEY_ID"),
        "aws_secret_access_key": os.environ.get("CLOUDKEEP_TEST_S3_SECRET"),
    }
    if os.environ.get("CLOUDKEEP_TEST_S3_CA_BUNDLE"):
        options["verify"] = os.environ["CLOUDKEEP_TEST_S3_CA_BUNDLE"]
    return options


@pytest.fixture(scope="session")
def moto_tls() -> Iterator[MotoServer]:
    """A second moto server, serving HTTPS with a self-signed certificate."""
    peer = MotoServer.start(tls=True)
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def azurite_tls() -> Iterator[Azurite]:
    """A second Azurite, serving HTTPS with a self-signed certificate."""
    peer = Azurite.start(tls=True)
    yield peer
    peer.stop()


@pytest.fixture
def aws_tls_options(moto_tls: MotoServer) -> dict[str, Any]:
    assert moto_tls.tls is not None
    return {
        "endpoint_url": moto_tls.endpoint,
        "region": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "verify": str(moto_tls.tls.cert),
    }


def make_s3_bucket(aws_options: dict[str, Any], name: str, *, lock: bool = False) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=aws_options["endpoint_url"],
        region_name=aws_options["region"],
        aws_access_key_id=aws_options["aws_access_key_id"],
        aws_secret_access_key=aws_options["aws_secret_access_key"],
        verify=aws_options.get("verify"),
    )
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)


def make_azure_container(azurite: Azurite, name: str) -> None:
    verify = str(azurite.tls.cert) if azurite.tls else True
    service = BlobServiceClient.from_connection_string(azurite.connection_string, connection_verify=verify)
    service.create_container(name)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str) -> Iterator[ObjectStore]:
    kind = request.param
    if kind == "file":
        opened = open_store(f"file://{tmp_path}/repo", fsync=False)
    elif kind == "memory":
        opened = open_store(f"memory://{unique_name}")
    elif kind == "s3-env":
        opened = open_store(
            f"{os.environ['CLOUDKEEP_TEST_S3_URL'].rstrip('/')}/{unique_name}", **env_s3_options()
        )
    elif kind.startswith("s3"):
        aws_options = request.getfixturevalue("aws_tls_options" if kind == "s3-https" else "aws_options")
        make_s3_bucket(aws_options, unique_name, lock=kind == "s3-lock")
        opened = open_store(
            f"s3://{unique_name}/some/prefix",
            multipart_threshold=6 * 2**20,
            multipart_chunk=5 * 2**20,
            **aws_options,
            # Plain "s3" lists at S3's real default page (1000 keys); the others page at 100: fast tests
            **({} if kind == "s3" else {"list_page_size": 100}),
        )
    else:
        azurite = request.getfixturevalue("azurite_tls" if kind == "azure-https" else "azurite")
        make_azure_container(azurite, unique_name)
        opened = open_store(
            f"azure://{unique_name}/some/prefix",
            connection_string=azurite.connection_string,
            connection_verify=str(azurite.tls.cert) if azurite.tls else True,
            list_page_size=100,  # the default page (5000 blobs) would never page test_list_paginates
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
