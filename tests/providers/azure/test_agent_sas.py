"""An agent's container SAS on Azurite, which enforces SAS permissions: add, never destroy.

The SAS is ``rlc`` (docs/security.md): a compromised machine can create new blobs and read, but
every delete and every overwrite of a pack, index file or restore point — its own or another
machine's — is refused by the peer (403), and a backup still works with it.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from cloudkeep.errors import PermissionDeniedError
from cloudkeep.providers.azure.provider import AzureProvider
from cloudkeep.repo import Repository, backup_files, check, list_snapshots, prune, restore
from cloudkeep.repo.grants import restore_keys
from cloudkeep.repo.index import encode_index_file
from cloudkeep.repo.vouch import VOUCH_PREFIX
from cloudkeep.repo.writer import BlobWriter
from cloudkeep.storage import ObjectExistsError, open_store
from cloudkeep.storage.azure_blob import AzureBlobStore
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, restored, write_tree

A, B = "writers/machine-a/", "writers/machine-b/"


def _agent(azure: AzureProvider, location: str, prefix: str, **options: int) -> Repository:
    creds = azure.storage.scoped_credentials(location, prefix, expires_seconds=900)
    return Repository.open(
        open_store(creds.store_url, **creds.options, **options), PASSWORD, writer_prefix=prefix
    )


def test_compromised_machine_sas_grants_only_read_list_create(azure: AzureProvider, unique_name: str) -> None:
    azure.storage.ensure_container(unique_name)
    creds = azure.storage.scoped_credentials(unique_name, A, expires_seconds=900)
    assert parse_qs(creds.options["credential"])["sp"] == ["rcl"]  # no w, d, a, i, x, t


def test_compromised_machine_cannot_delete_or_overwrite_on_azurite(
    azure: AzureProvider, unique_name: str, tmp_path: Path
) -> None:
    location = f"{unique_name}/repo"
    azure.storage.ensure_container(unique_name)
    server = azure.storage.open_store(location)
    Repository.create(server, PASSWORD, pack_size=256 * 1024, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
    # The repository creator (config, keys/) is the server: agents only open it.
    theirs = backup_files(_agent(azure, location, B), [write_tree(tmp_path / "b", seed=2)], hostname="b")
    agent = _agent(azure, location, A)
    mine = backup_files(agent, [write_tree(tmp_path / "a")], hostname="a")  # a backup works on rlc

    victims = [i.key for i in server.list("") if i.key.startswith((A, B)) and "/sessions/" not in i.key]
    for kind in ("/data/", "/index/", "/snapshots/"):
        assert any(kind in k and k.startswith(A) for k in victims)
        assert any(kind in k and k.startswith(B) for k in victims)
    before = {key: server.get(key) for key in victims}
    for key in victims:
        with pytest.raises(PermissionDeniedError):
            agent.store.delete(key)
        with pytest.raises(PermissionDeniedError):
            agent.store.put(key, b"rewritten")
        with pytest.raises((ObjectExistsError, PermissionDeniedError)):
            agent.store.put(key, b"rewritten", if_absent=True)
    assert {key: server.get(key) for key in victims} == before

    full = Repository.open(server, PASSWORD)
    assert {s.id for s in list_snapshots(full)} == {mine.id, theirs.id}
    assert check(full, read_data=True).ok
    prune(full)  # the server's own credential removes the ended sessions' markers
    assert not any(True for _ in server.list(A + "sessions/"))


def test_staged_blocks_need_write_so_agents_put_each_pack_whole(
    azure: AzureProvider, unique_name: str, tmp_path: Path
) -> None:
    """Azurite (like Azure's documented SAS table) wants `w` for Put Block / Put Block List, which
    `rlc` lacks: an agent uploads every object in one Put Blob. Packs (32 MiB by default, one chunk
    of at most 8 MiB over) stay below the single-put limit (64 MiB); a bigger object is refused."""
    azure.storage.ensure_container(unique_name)
    creds = azure.storage.scoped_credentials(unique_name, A, expires_seconds=900)
    agent = open_store(
        creds.store_url, **creds.options, max_single_put_size=64 * 1024, max_block_size=32 * 1024
    )
    agent.put(A + "small", b"x" * 1000)
    with pytest.raises(PermissionDeniedError):
        agent.put(A + "large", b"x" * (200 * 1024))
    assert AzureBlobStore.__init__.__kwdefaults__["max_single_put_size"] == 64 * 2**20


def test_a_locked_backup_on_the_agent_sas_completes_and_says_what_it_could_not_lock(
    azure: AzureProvider, unique_name: str, tmp_path: Path
) -> None:
    """Extending the lock of another machine's reused pack needs `w`/`i`, which agents no longer
    hold: the backup still commits and its stats say how many packs kept a shorter lock (the
    server takes lock extension over: branch `locks`)."""
    location = f"{unique_name}/repo"
    azure.storage.ensure_container(unique_name)
    server = azure.storage.open_store(location)
    Repository.create(server, PASSWORD, pack_size=256 * 1024, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
    source = write_tree(tmp_path / "same")
    now = datetime.now(UTC)
    backup_files(_agent(azure, location, B), [source], hostname="b", retain_until=now + timedelta(days=1))
    mine = backup_files(
        _agent(azure, location, A), [source], hostname="a", retain_until=now + timedelta(days=30)
    )
    assert any("agents may not extend locks" in w for w in mine.stats["warnings"])
    theirs = [i for i in server.list(B + "data/")]
    assert theirs and all(
        i.retain_until is not None and i.retain_until < now + timedelta(days=2) for i in theirs
    )


def test_compromised_machine_cannot_forge_a_vouched_file_with_its_sas(
    azure: AzureProvider, unique_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The flat namespace lets an agent's SAS create a root ``vouched/`` name (docs/security.md),
    and it holds the shared key that seals index records; without the server's signing key the
    file is ignored with a warning, so no other machine deduplicates against what it names."""
    location = f"{unique_name}/repo"
    azure.storage.ensure_container(unique_name)
    server = Repository.create(
        azure.storage.open_store(location), PASSWORD, pack_size=256 * 1024, kdf=FAST_KDF,
        chunker=SMALL_CHUNKS, version=3,
    )  # fmt: skip
    bundle = server.writer_bundle()

    def agent(prefix: str) -> Repository:
        creds = azure.storage.scoped_credentials(location, prefix, expires_seconds=900)
        store = open_store(creds.store_url, **creds.options)
        return Repository.open_writer(store, bundle, writer_prefix=prefix)

    attacker = agent(A)
    backup_files(attacker, [write_tree(tmp_path / "a")], hostname="a")
    attacker.load_index()
    packs = dict(attacker.index.pack_entries())
    forged = encode_index_file(attacker.crypter, packs, aad=b"cloudkeep-vouched-v1") + bytes(64)
    attacker.store.put(VOUCH_PREFIX + "forged", forged, if_absent=True)  # the SAS allows the create
    with caplog.at_level("WARNING", logger="cloudkeep.repo.vouch"):
        victim = agent(B)
    assert list(victim.unverified_vouches) == [VOUCH_PREFIX + "forged"]
    assert "not signed by the server" in caplog.text
    assert len(victim.index) == 0 and len(victim.foreign) == sum(len(e) for e in packs.values())


def test_compromised_machine_cannot_forge_an_index_file_in_another_namespace_on_azurite(
    azure: AzureProvider, unique_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The flat namespace lets machine A's SAS create ``writers/B/index/<new>``, sealed under the
    shared key every machine holds, indexing a chunk B will back up in a pack of A's holding other
    bytes. B trusts for dedup only index files its own writer key authenticates (repo/writermac.py):
    it stores its own copy, says which file it ignored, and its restore gives the true bytes."""
    location = f"{unique_name}/repo"
    azure.storage.ensure_container(unique_name)
    server = Repository.create(
        azure.storage.open_store(location), PASSWORD, pack_size=256 * 1024, kdf=FAST_KDF,
        chunker=SMALL_CHUNKS, version=3,
    )  # fmt: skip

    def agent(prefix: str) -> Repository:  # the machine's own bundle, as the server sends it
        creds = azure.storage.scoped_credentials(location, prefix, expires_seconds=900)
        store = open_store(creds.store_url, **creds.options)
        return Repository.open_writer(store, server.writer_bundle(prefix), writer_prefix=prefix)

    common = b"#!/bin/sh\n# a file every machine of the fleet has\n" * 20
    attacker = agent(A)
    with BlobWriter(attacker, hostname="evil") as writer:
        forged_id, _ = writer.save("data", os.urandom(len(common)), attacker.crypter.content_id(common))
        writer.close()
    attacker.load_index()
    pack_id = attacker.locate(forged_id).pack_id
    forged_key = B + "index/" + "f" * 32
    sealed = encode_index_file(attacker.crypter, {pack_id: attacker.index.entries_of(pack_id)})
    attacker.store.put(forged_key, sealed, if_absent=True)  # the SAS allows the create
    assert attacker.store.get(forged_key) == sealed

    source = tmp_path / "victim"
    source.mkdir()
    (source / "common.sh").write_bytes(common)
    with caplog.at_level("WARNING", logger="cloudkeep.repo.repository"):
        victim = agent(B)
    assert list(victim.unauthenticated_index_files) == [forged_key] and forged_key in caplog.text
    assert forged_id not in victim.index
    snap = backup_files(victim, [source], hostname="b")
    assert snap.stats["bytes_new"] >= len(common)  # its own copy, not the forged entry
    reader = agent(B)
    assert reader.locate(forged_id).pack_id.startswith(B)
    server.load_index()
    reader.grant_keys(restore_keys(server, snap.id))
    assert restore(reader, snap.id, tmp_path / "out").ok
    assert (restored(tmp_path / "out", source) / "common.sh").read_bytes() == common
