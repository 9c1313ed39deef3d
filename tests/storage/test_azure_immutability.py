"""Real Azure immutability (version-level policies), verified against a stand-in.

Azurite has no immutability, so ``AzureImmutabilityStandin`` (tests/support) sits in front of the
real Azurite and does on the wire what Azure does: it reports the container's version-level
immutability, records policies from the SDK's requests (checking their shape), returns them in
blob properties, and refuses delete / overwrite / metadata changes of a locked blob — even for a
SAS that includes write and delete, which is what makes the lock real.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobClient, ContainerSasPermissions, generate_container_sas

from cloudkeep.storage import ObjectLockedError, open_store
from cloudkeep.storage.azure_blob import AzureBlobStore
from tests.storage.conftest import make_azure_container
from tests.support.azure_immutability_standin import AzureImmutabilityStandin
from tests.support.peers import AZURITE_ACCOUNT, AZURITE_KEY, Azurite

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def standin(azurite: Azurite) -> Iterator[AzureImmutabilityStandin]:
    proxy = AzureImmutabilityStandin(azurite.blob_endpoint, clock=lambda: NOW)
    yield proxy
    proxy.close()


@pytest.fixture
def store(azurite: Azurite, standin: AzureImmutabilityStandin, unique_name: str) -> Iterator[AzureBlobStore]:
    make_azure_container(azurite, unique_name)
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={standin.blob_endpoint};"
    )
    opened = open_store(
        f"azure://{unique_name}/repo",
        connection_string=connection,
        max_single_put_size=2**20,
        max_block_size=2**20,
    )
    assert isinstance(opened, AzureBlobStore)
    yield opened
    opened.close()


def _agent_blob(standin: AzureImmutabilityStandin, container: str, name: str) -> BlobClient:
    """What an agent holds: a container SAS with write and delete."""
    sas = generate_container_sas(
        AZURITE_ACCOUNT, container, account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, write=True, delete=True, create=True, add=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )  # fmt: skip
    return BlobClient(standin.blob_endpoint, container, name, credential=sas)


def test_mode_follows_the_container(store: AzureBlobStore) -> None:
    assert store.immutability_mode == "version-level"
    assert store.immutability and store.lock_is_enforced and store.supports_object_lock


@pytest.mark.parametrize("size", [10, 3 * 2**20 + 5])  # one PUT; staged blocks and a block-list commit
def test_locked_blob_refuses_delete_and_overwrite_even_for_the_agents_sas(
    store: AzureBlobStore, standin: AzureImmutabilityStandin, unique_name: str, size: int
) -> None:
    until = NOW + timedelta(days=30)
    data = os.urandom(size)
    store.put("snapshots/s1", data, retain_until=until)
    ((path, until_header, mode),) = standin.policy_requests
    assert path.endswith("/repo/snapshots/s1") and mode == "Locked"
    assert until_header.endswith("GMT")  # RFC 1123, as Azure requires
    info = store.stat("snapshots/s1")
    assert info is not None and info.retain_until == until
    with pytest.raises(ObjectLockedError):
        store.delete("snapshots/s1")
    with pytest.raises(ObjectLockedError):
        store.put("snapshots/s1", b"other")
    agent = _agent_blob(standin, unique_name, "repo/snapshots/s1")
    attempts = [
        agent.delete_blob,
        lambda: agent.upload_blob(b"x", overwrite=True),
        lambda: agent.set_blob_metadata({"retain_until": "2000-01-01T00:00:00+00:00"}),
    ]
    for attempt in attempts:
        with pytest.raises(HttpResponseError) as refused:
            attempt()
        assert refused.value.status_code == 409 and refused.value.error_code == "BlobImmutableDueToPolicy"
    assert store.get("snapshots/s1") == data
    assert "retain_until" not in (agent.get_blob_properties().metadata or {})  # the policy is the record


def test_extend_retention_sets_a_longer_policy(
    store: AzureBlobStore, standin: AzureImmutabilityStandin
) -> None:
    store.put("data/p1", b"pack", retain_until=NOW + timedelta(days=1))
    assert store.extend_retention("data/p1", NOW + timedelta(days=9))
    assert store.extend_retention("data/p1", NOW + timedelta(days=2))  # shorter: left alone
    assert [mode for _, _, mode in standin.policy_requests] == ["Locked", "Locked"]
    assert store.stat("data/p1").retain_until == NOW + timedelta(days=9)  # type: ignore[union-attr]


def test_expired_policy_allows_delete(store: AzureBlobStore, standin: AzureImmutabilityStandin) -> None:
    store.put("data/old", b"x", retain_until=NOW - timedelta(seconds=1))
    store.delete("data/old")
    assert store.stat("data/old") is None


def test_plain_azurite_keeps_the_metadata_stand_in(azurite: Azurite, unique_name: str) -> None:
    make_azure_container(azurite, unique_name)
    store = open_store(f"azure://{unique_name}", connection_string=azurite.connection_string)
    assert isinstance(store, AzureBlobStore)
    assert store.immutability_mode == "" and not store.lock_is_enforced
    store.close()
