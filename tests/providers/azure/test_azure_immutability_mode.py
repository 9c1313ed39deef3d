"""Agents are told the container's immutability mode: their container SAS cannot read it.

Version-level immutability comes from ``AzureImmutabilityStandin`` in front of Azurite (which has
none); plain Azurite shows the metadata stand-in mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from cloudkeep.errors import PermissionDeniedError
from cloudkeep.providers.azure.provider import AzureProvider, create_azure_provider
from cloudkeep.storage import ObjectLockedError
from tests.support.arm_standin import ArmStandIn
from tests.support.azure_immutability_standin import AzureImmutabilityStandin
from tests.support.peers import AZURITE_ACCOUNT, AZURITE_KEY, Azurite


@pytest.fixture
def immutable_azure(arm_standin: ArmStandIn, azurite: Azurite) -> Iterator[AzureProvider]:
    standin = AzureImmutabilityStandin(azurite.blob_endpoint)
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={standin.blob_endpoint};"
    )
    options = arm_standin.provider_options(storage_connection_string=connection, retry_backoff_factor=0.01)
    provider = create_azure_provider(arm_standin.credential(), options)
    yield provider
    provider.close()
    standin.close()


def test_agents_get_the_mode_and_their_locks_are_real(
    immutable_azure: AzureProvider, unique_name: str
) -> None:
    immutable_azure.storage.ensure_container(unique_name)
    creds = immutable_azure.storage.scoped_credentials(unique_name, "writers/m1/", expires_seconds=900)
    assert creds.options["immutability"] == "version-level"
    agent = creds.open_store()
    agent.put("writers/m1/snapshots/s", b"restore point", retain_until=datetime.now(UTC) + timedelta(days=7))
    with pytest.raises(ObjectLockedError):
        agent.delete("writers/m1/snapshots/s")


def test_plain_azurite_is_the_metadata_stand_in(azure: AzureProvider, unique_name: str) -> None:
    azure.storage.ensure_container(unique_name)
    creds = azure.storage.scoped_credentials(unique_name, "writers/m1/", expires_seconds=900)
    assert creds.options["immutability"] == ""
    options = {k: v for k, v in creds.options.items() if k != "immutability"}
    from cloudkeep.storage import open_store

    guessing = open_store(creds.store_url, **options)
    with pytest.raises(PermissionDeniedError, match="immutability settings"):
        guessing.put("writers/m1/x", b"x", retain_until=datetime.now(UTC) + timedelta(days=1))
