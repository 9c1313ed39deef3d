"""Immutability by generations on Azure (docs/format.md): agents never lock; the server locks each
job's new packs and manifests right after the job and extends live packs in bulk once a generation.

Azurite has no immutability, so the blob traffic goes through ``AzureImmutabilityStandin``
(tests/support), a **stand-in**: a proxy in front of the real Azurite that does on the wire what
Azure's version-level immutability does (reports it on the container, records and enforces blob
policies, lists them with ``include=immutabilitypolicy``). Everything else — the agent's SAS, its
create-only writes, listing — is Azurite's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cloudkeep.compat import UTC
from cloudkeep.providers.azure.provider import AzureProvider, create_azure_provider
from cloudkeep.repo import Repository, backup_files
from cloudkeep.repo.generations import enable_generations, extend_locks, supports_generations
from cloudkeep.server.jobs.retention import ServerMaintenance
from cloudkeep.storage import ObjectLockedError
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, write_tree
from tests.support.arm_standin import ArmStandIn
from tests.support.azure_immutability_standin import AzureImmutabilityStandin
from tests.support.peers import AZURITE_ACCOUNT, AZURITE_KEY, Azurite

R, G = 30, 7
D = timedelta(days=R + G)


@pytest.fixture
def standin(azurite: Azurite) -> Iterator[AzureImmutabilityStandin]:
    proxy = AzureImmutabilityStandin(azurite.blob_endpoint)
    yield proxy
    proxy.close()


@pytest.fixture
def azure(arm_standin: ArmStandIn, standin: AzureImmutabilityStandin) -> Iterator[AzureProvider]:
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={standin.blob_endpoint};"
    )
    options = arm_standin.provider_options(storage_connection_string=connection, retry_backoff_factor=0.01)
    provider = create_azure_provider(arm_standin.credential(), options)
    yield provider
    provider.close()


def _near(when: datetime | None, expected: datetime) -> bool:
    """Azure carries policy dates in RFC 1123: whole seconds."""
    return when is not None and abs(when - expected) < timedelta(seconds=2)


def test_compromised_machine_never_locks_on_azure_the_server_locks_after_the_job_and_extends(
    azure: AzureProvider, standin: AzureImmutabilityStandin, unique_name: str, tmp_path: Path
) -> None:
    location = f"{unique_name}/repo"
    azure.storage.ensure_container(location)
    server_store = azure.storage.open_store(location)
    assert supports_generations(server_store) and not server_store.supports_default_retention
    repo = Repository.create(server_store, PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=256 * 1024)
    enable_generations(repo, retention_days=R)

    # The agent: a container SAS with read, list and create only (no `i`), told the container's mode.
    creds = azure.storage.scoped_credentials(location, "writers/m1/", expires_seconds=900)
    assert creds.options["immutability"] == "version-level"
    agent_store = creds.open_store()
    now = datetime.now(UTC)
    agent_repo = Repository.open(agent_store, PASSWORD, writer_prefix="writers/m1/")
    backup_files(
        agent_repo, [write_tree(tmp_path / "a")], hostname="m1", retain_until=now + timedelta(days=R)
    )
    agent_store.close()
    assert standin.policy_requests == []  # 0 lock requests from the agent
    packs = sorted(i.key for i in server_store.list("writers/m1/data/"))
    manifests = sorted(i.key for i in server_store.list("writers/m1/snapshots/"))
    assert packs and len(manifests) == 1
    # The window: what the backup wrote is unlocked until the server's step after the job.
    assert all(server_store.stat(k).retain_until is None for k in packs + manifests)  # type: ignore[union-attr]

    maintenance = ServerMaintenance(azure, location, PASSWORD)
    try:
        assert maintenance.lock_new(["m1"], now) == len(packs) + len(manifests)
        blob = f"/{AZURITE_ACCOUNT}/{unique_name}/repo/"
        assert sorted(path for path, _, _ in standin.policy_requests) == [
            blob + k for k in sorted(packs + manifests)
        ]
        assert {mode for _, _, mode in standin.policy_requests} == {"Locked"}
        for key in packs + manifests:
            assert _near(server_store.stat(key).retain_until, now + D), key  # type: ignore[union-attr]
        with pytest.raises(ObjectLockedError):  # not even the account key removes them now
            server_store.delete(packs[0])
        # The next job's step finds them locked in the listing: no HEAD, no second policy.
        standin.policy_requests.clear()
        assert maintenance.lock_new(["m1"], now + timedelta(hours=1)) == 0
        assert standin.policy_requests == []
    finally:
        maintenance.close()

    # The bulk step extends every live pack once a generation (N packs / G requests a day, no HEAD),
    # and within a generation only reads; nothing is new.
    for start in (now + timedelta(days=1), now + timedelta(days=1 + G)):
        standin.policy_requests.clear()
        result = extend_locks(repo, now=start)
        assert (result.extended, result.read_once, result.locked_new) == (len(packs), 0, 0)
        assert len(standin.policy_requests) == len(packs)
        assert all(_near(server_store.stat(k).retain_until, start + D) for k in packs)  # type: ignore[union-attr]
        standin.policy_requests.clear()
        assert extend_locks(repo, now=start + timedelta(days=G - 1)).skipped
        assert standin.policy_requests == []
    assert _near(server_store.stat(manifests[0]).retain_until, now + D)  # type: ignore[union-attr]
    server_store.close()


def test_the_bulk_step_catches_up_a_job_whose_lock_step_never_ran(
    azure: AzureProvider, standin: AzureImmutabilityStandin, unique_name: str, tmp_path: Path
) -> None:
    location = f"{unique_name}/repo"
    azure.storage.ensure_container(location)
    store = azure.storage.open_store(location)
    repo = Repository.create(store, PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=256 * 1024)
    enable_generations(repo, retention_days=R)
    now = datetime.now(UTC)
    writer = Repository.open(store, PASSWORD, writer_prefix="writers/m2/")
    backup_files(
        writer, [write_tree(tmp_path / "b", seed=2)], hostname="m2", retain_until=now + timedelta(days=R)
    )
    new = {i.key for i in store.list("writers/m2/data/")} | {
        i.key for i in store.list("writers/m2/snapshots/")
    }
    first = extend_locks(Repository.open(store, PASSWORD), now=now)
    assert first.locked_new == len(new) and first.extended == 0  # new packs locked once, not twice
    assert len(standin.policy_requests) == len(new)
    store.close()
