"""Format 3: one machine's keys and credentials cannot read another writer's packs, trees or manifests.

A machine holds a writer bundle (MAC key, shared index key, public key); the server holds the
password, and with it the private key. Stores are the in-memory backend (the property tested is
cryptographic, not a store's permission model).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cloudkeep.compat import UTC
from cloudkeep.errors import ConfigurationError, IntegrityError, PermissionDeniedError
from cloudkeep.repo import Repository, backup_files, check, forget_snapshots, prune, rebuild_index, restore
from cloudkeep.repo.confidential import (
    CONFIDENTIAL_KEY,
    MANIFEST_MAGIC,
    PACK_MAGIC,
    PACK_PRELUDE_SIZE,
    WRAPPED_SIZE,
    WriterBundle,
    manifest_reader,
)
from cloudkeep.repo.grants import restore_keys
from cloudkeep.repo.migrate import migrate_to_confidential
from cloudkeep.repo.pack import pack_key, read_header
from cloudkeep.repo.snapshot import SNAPSHOT_PREFIX
from cloudkeep.repo.vouch import VOUCH_PREFIX, vouch_new_packs
from cloudkeep.repo.writer import BlobWriter
from cloudkeep.repo.writermac import split_mac
from cloudkeep.storage import ObjectStore
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, restored, subtree_of, write_tree

A, B = "writers/machine-a/", "writers/machine-b/"
SECRET_NAME = "payroll-secret-name.txt"


@pytest.fixture
def server(store: ObjectStore) -> Repository:
    return Repository.create(
        store, PASSWORD, pack_size=512 * 1024, kdf=FAST_KDF, chunker=SMALL_CHUNKS, version=3
    )


def machine(store: ObjectStore, server: Repository, prefix: str) -> Repository:
    """A machine's repository, from the bundle as it travels (JSON), never from the password."""
    bundle = WriterBundle.from_json(json.loads(json.dumps(server.writer_bundle(prefix).to_json())))
    return Repository.open_writer(store, bundle, writer_prefix=prefix)


def secret_tree(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / SECRET_NAME).write_bytes(b"salary of everyone: 12345\n" * 2000)
    (root / "random.bin").write_bytes(os.urandom(300 * 1024))
    return root


def test_compromised_machine_cannot_decrypt_other_writers_pack(
    store: ObjectStore, server: Repository, tmp_path: Path
) -> None:
    victim = machine(store, server, B)
    snap = backup_files(victim, [secret_tree(tmp_path / "b")], hostname="b")
    assert vouch_new_packs(server).vouched  # the server's step after the job: now dedup candidates
    attacker = machine(store, server, A)  # everything machine A holds: its bundle and the store
    attacker.load_index()
    victim_packs = [p for p in attacker.index.packs if p.startswith(B)]
    assert victim_packs, "the attacker sees the victim's vouched packs in the index (dedup needs it)"
    for pack_id in victim_packs:
        entry = attacker.index.packs[pack_id][0]
        sealed = store.get_range(pack_key(pack_id), entry.offset, entry.length)
        with pytest.raises(PermissionDeniedError):  # data and tree blobs alike
            attacker.decode_blob(entry, pack_id, sealed)
        body = store.get(pack_key(pack_id))
        assert body.startswith(PACK_MAGIC)
        # Every key the machine holds, tried directly on the victim's blob and header: none opens them.
        for crypter in (
            attacker.crypter,
            attacker.crypter.with_encryption_key(attacker.keyring.shared.key.id_key),
        ):
            with pytest.raises(IntegrityError):
                crypter.decode(sealed, b"cloudkeep-blob-v1:" + entry.type.encode() + b":" + entry.id, "blob")
            with pytest.raises(IntegrityError):
                read_header(crypter, pack_id, body, len(body))
        with pytest.raises(PermissionDeniedError):
            attacker.keyring.pack_data_key(pack_id, lambda b=body: b[:PACK_PRELUDE_SIZE])
    with pytest.raises(PermissionDeniedError):  # the victim's restore point: names, paths, tree id
        attacker.load_snapshot(snap.id)
    manifest = store.get(B + SNAPSHOT_PREFIX + snap.id)
    assert manifest.startswith(MANIFEST_MAGIC)
    with pytest.raises(IntegrityError):
        attacker.crypter.decode(manifest[len(MANIFEST_MAGIC) + WRAPPED_SIZE :], b"x", "manifest")
    # What the machine can read (index files, markers) holds no name and no content of the victim.
    for info in attacker.list_everywhere("index/"):
        sealed, _ = split_mac(store.get(info.key))  # the writer's MAC trailer (repo/writermac.py)
        plain = attacker.keyring.open_shared(sealed, b"cloudkeep-index-v1", info.key)
        assert SECRET_NAME.encode() not in plain and b"salary" not in plain
    for info in store.list(VOUCH_PREFIX):  # the server's vouched files: the same records, signed
        plain = attacker.crypter.decode(store.get(info.key)[:-64], b"cloudkeep-vouched-v1", info.key)
        assert SECRET_NAME.encode() not in plain and b"salary" not in plain
    # The machine's credential never needed the repository key material either.
    with pytest.raises(PermissionDeniedError):
        attacker.add_password("mine now")
    assert attacker.master is None and attacker.keyring.private_key is None
    # And the server, with the private key, reads it all.
    assert server.load_snapshot(snap.id).hostname == "b"
    assert check(server, read_data=True).ok


def test_dedup_works_across_two_confidential_writers(
    store: ObjectStore, server: Repository, tmp_path: Path
) -> None:
    source = secret_tree(tmp_path / "shared")
    first = backup_files(machine(store, server, A), [source], hostname="a")
    vouch_new_packs(server)  # the server's step after A's job: B reuses only what it vouched for
    second = backup_files(machine(store, server, B), [source], hostname="b")
    assert first.stats["bytes_new"] > 300 * 1024
    # Same content, same tree ids: no data chunk is stored twice, nor any tree of the source (only
    # the folders above it may be, /tmp changing with other processes).
    assert second.stats["bytes_new"] < 4096
    assert subtree_of(server, second.tree, source) == subtree_of(server, first.tree, source)


def test_restore_with_keys_sent_by_the_server(store: ObjectStore, server: Repository, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src")
    mine = machine(store, server, A)
    snap = backup_files(mine, [source], hostname="a")
    other = backup_files(machine(store, server, B), [secret_tree(tmp_path / "b")], hostname="b")
    with pytest.raises(PermissionDeniedError):  # its own data too, until the server grants keys
        restore(machine(store, server, A), snap.id, tmp_path / "denied")

    server.load_index()
    grants = restore_keys(server, snap.id)
    assert grants and all(key.startswith(A) for key in grants)  # its manifest and its packs, nothing else
    restoring = machine(store, server, A)
    restoring.grant_keys(grants)
    result = restore(restoring, snap.id, tmp_path / "out")
    assert result.ok, result.errors
    target = restored(tmp_path / "out", source)
    assert (target / "blob.bin").read_bytes() == (source / "blob.bin").read_bytes()
    assert (target / "docs" / "readme.txt").read_text() == (source / "docs" / "readme.txt").read_text()
    with pytest.raises(PermissionDeniedError):  # packs outside the granted set stay closed
        restoring.load_snapshot(other.id)

    # A partial restore gets only the packs on the way to and under the path.
    partial = restore_keys(server, snap.id, [str(source / "docs")])
    assert set(partial) < set(grants)


def test_tampered_wrapped_key_is_an_integrity_error(
    store: ObjectStore, server: Repository, tmp_path: Path
) -> None:
    snap = backup_files(machine(store, server, A), [secret_tree(tmp_path / "a")], hostname="a")
    server.load_index()
    pack_id = next(p for p in server.index.packs if p.startswith(A))
    key = pack_key(pack_id)
    body = bytearray(store.get(key))
    body[len(PACK_MAGIC) + 40] ^= 1  # inside the wrapped data key
    store.put(key, bytes(body))
    fresh = Repository.open(store, PASSWORD)
    with pytest.raises(IntegrityError, match="wrapped key"):
        fresh.pack_crypter(pack_id)
    with pytest.raises(IntegrityError, match="wrapped key"):
        restore_keys(fresh, snap.id)
    report = check(Repository.open(store, PASSWORD), read_data=True)
    assert not report.ok and any(key in p.object for p in report.problems)
    # The same for a manifest's wrapped content key.
    manifest_key = A + SNAPSHOT_PREFIX + snap.id
    manifest = bytearray(store.get(manifest_key))
    manifest[len(MANIFEST_MAGIC) + 50] ^= 1
    store.put(manifest_key, bytes(manifest))
    with pytest.raises(IntegrityError, match="wrapped key"):
        Repository.open(store, PASSWORD).load_snapshot(snap.id)


def test_migrating_a_format_2_repository(store: ObjectStore, tmp_path: Path) -> None:
    old = Repository.create(
        store, PASSWORD, pack_size=512 * 1024, kdf=FAST_KDF, chunker=SMALL_CHUNKS, version=2
    )
    source = secret_tree(tmp_path / "src")
    before = backup_files(Repository.open(store, PASSWORD, writer_prefix=A), [source], hostname="a")
    assert not store.exists(CONFIDENTIAL_KEY)

    stale = Repository.open(store, PASSWORD)  # opened before: a second migration racing the first
    assert migrate_to_confidential(old) is True
    assert migrate_to_confidential(old) is False  # idempotent
    assert migrate_to_confidential(stale) is True
    assert stale.keyring.keys == old.keyring.keys  # one key pair: the create-only object decides
    server = Repository.open(store, PASSWORD)
    assert server.config.version == 3 and server.config.created_version == 2
    # Machines reuse only vouched packs: the server's step after the next job reads the old ones once.
    assert vouch_new_packs(server).vouched
    (source / "new.txt").write_text("written after the migration\n" * 100)
    after = backup_files(machine(store, server, B), [source], hostname="b")
    assert after.stats["bytes_new"] < 10 * 1024  # the old chunks still deduplicate (same MAC key)

    server.load_index()
    old_packs = [p for p in server.index.packs if p.startswith(A)]
    new_packs = [p for p in server.index.packs if p.startswith(B)]
    assert all(not store.get(pack_key(p)).startswith(PACK_MAGIC) for p in old_packs)
    assert all(store.get(pack_key(p)).startswith(PACK_MAGIC) for p in new_packs)
    # Both restore points restore with the password: old packs under the repository key, new ones
    # under their data keys; and the server's grants for the new one leave the old packs out.
    for snap in (before, after):
        out = tmp_path / f"out-{snap.id[:8]}"
        assert restore(server, snap.id, out).ok
        assert (restored(out, source) / SECRET_NAME).read_bytes() == (source / SECRET_NAME).read_bytes()
    assert not any(key.startswith(A) for key in restore_keys(server, after.id))
    assert check(server, read_data=True).ok
    # A new writer never sees the old repository key: it cannot read the pre-migration packs.
    outsider = machine(store, server, "writers/machine-c/")
    entry = outsider.index.packs[old_packs[0]][0]
    with pytest.raises(PermissionDeniedError):
        outsider.decode_blob(
            entry, old_packs[0], store.get_range(pack_key(old_packs[0]), entry.offset, entry.length)
        )


def test_a_malformed_writer_bundle_is_a_clear_error(server: Repository) -> None:
    body = server.writer_bundle().to_json()
    for bad in ({**body, "public_key": "AAAA"}, {**body, "format": 2}, [], {**body, "config": "x"}):
        with pytest.raises(ConfigurationError):
            WriterBundle.from_json(bad)


def test_server_reads_format_3_manifests_by_key_and_rebuilds_the_index_from_pack_headers(
    store: ObjectStore, server: Repository, tmp_path: Path
) -> None:
    source = secret_tree(tmp_path / "a")
    snap = backup_files(machine(store, server, A), [source], hostname="a")
    assert server.master is not None
    read = manifest_reader(store, server.master)  # what the server's catalog pins use
    assert read(A + SNAPSHOT_PREFIX + snap.id).tree == snap.tree
    for info in list(store.list(A + "index/")):
        store.delete(info.key)
    full = Repository.open(store, PASSWORD)
    assert rebuild_index(full) > 0  # headers opened with each pack's unwrapped data key
    tree = bytes.fromhex(snap.tree)
    other = machine(store, server, B)
    assert other.locate(tree).pack_id.startswith(A)  # re-sealed for every writer: readable...
    assert not other.has_blob(tree)  # ...but another writer reuses it only once the server vouched
    assert vouch_new_packs(full).vouched
    assert machine(store, server, B).has_blob(tree)
    out = tmp_path / "out"
    assert restore(full, snap.id, out).ok
    assert (restored(out, source) / SECRET_NAME).read_bytes() == (source / SECRET_NAME).read_bytes()


def test_prune_after_migration_rewrites_old_packs_into_format_3(store: ObjectStore, tmp_path: Path) -> None:
    Repository.create(store, PASSWORD, pack_size=2**20, kdf=FAST_KDF, chunker=SMALL_CHUNKS, version=2)
    source = secret_tree(tmp_path / "src")
    old_writer = Repository.open(store, PASSWORD, writer_prefix=A)
    first = backup_files(old_writer, [source], hostname="a")
    (source / "random.bin").write_bytes(os.urandom(300 * 1024))  # shares a pack with kept data
    second = backup_files(old_writer, [source], hostname="a")
    server = Repository.open(store, PASSWORD)
    assert migrate_to_confidential(server)
    forget_snapshots(server, [first.id])
    now = datetime.now(UTC)
    marked = prune(server, now=now)
    swept = prune(server, now=now + timedelta(hours=2))
    assert marked.packs_repacked > 0 and swept.packs_deleted > 0
    full = Repository.open(store, PASSWORD)
    repacked = [p for p in full.index.packs if "/" not in p]  # prune writes at the root
    assert repacked and all(store.get(pack_key(p)).startswith(PACK_MAGIC) for p in repacked)
    assert check(full, read_data=True).ok
    grants = restore_keys(full, second.id)
    assert {pack_key(p) for p in repacked} <= set(grants)  # now confidential, so grantable
    out = tmp_path / "out"
    assert restore(full, second.id, out).ok
    assert (restored(out, source) / "random.bin").read_bytes() == (source / "random.bin").read_bytes()


def test_compromised_machine_cannot_poison_another_machines_dedup(
    store: ObjectStore, server: Repository, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/security.md, "poison deduplication": a machine holds the MAC key, so it can index a
    chunk it guesses (a common file) in a pack of its own holding other bytes. Another machine
    does not deduplicate against it (not vouched), the server's vouch step refuses that pack and
    names its writer, and honest packs, once vouched, are deduplicated from the next job on."""
    common = b"#!/bin/sh\n# a file every machine of the fleet has\n" * 20
    attacker = machine(store, server, A)
    forged = os.urandom(len(common))
    with BlobWriter(attacker, hostname="evil") as writer:
        forged_id, new = writer.save("data", forged, attacker.crypter.content_id(common))
        assert new
        writer.close()
    source = tmp_path / "victim"
    source.mkdir()
    (source / "common.sh").write_bytes(common)
    victim = machine(store, server, B)
    assert victim.locate(forged_id).pack_id.startswith(A) and not victim.has_blob(forged_id)
    snap = backup_files(victim, [source], hostname="b")
    assert snap.stats["bytes_new"] >= len(common)  # its own copy, no dedup against the forged pack

    server.load_index()
    packs = server.index.packs
    own = [p for p in packs if p.startswith(B) and packs[p][0].type == "data"]
    assert len(own) == 1 and [e.id for e in packs[own[0]]] == [forged_id]
    restoring = machine(store, server, B)
    restoring.grant_keys(restore_keys(server, snap.id))
    assert restore(restoring, snap.id, tmp_path / "out").ok
    assert (restored(tmp_path / "out", source) / "common.sh").read_bytes() == common

    with caplog.at_level("WARNING", logger="cloudkeep.repo.vouch"):
        result = vouch_new_packs(server)
    forged_packs = [p for p in packs if p.startswith(A) and packs[p][0].type == "data"]
    assert list(result.refused) == forged_packs and result.refused_writers == [A]
    assert "does not match its id" in result.refused[forged_packs[0]]
    assert forged_packs[0] in caplog.text
    assert own[0] in result.vouched and forged_packs[0] not in result.vouched
    assert result.bytes_read == sum(len(store.get(pack_key(p))) for p in [*result.vouched, *result.refused])

    # From the next job on, a third machine deduplicates against the victim's vouched copy, never
    # against the forged one, and restores the true bytes.
    third = machine(store, server, "writers/machine-c/")
    assert third.locate(forged_id).pack_id == own[0] and third.has_blob(forged_id)
    other = tmp_path / "third"
    other.mkdir()
    (other / "common.sh").write_bytes(common)
    again = backup_files(third, [other], hostname="c")
    server.load_index()
    packs = server.index.packs
    assert [p for p in packs if p.startswith("writers/machine-c/") and packs[p][0].type == "data"] == []
    granted = machine(store, server, "writers/machine-c/")
    granted.grant_keys(restore_keys(server, again.id))
    assert restore(granted, again.id, tmp_path / "out-c").ok
    assert (restored(tmp_path / "out-c", other) / "common.sh").read_bytes() == common
    # Vouching again reads nothing new (idempotent), but still refuses the forged pack.
    third_packs = [p for p in server.index.packs if p.startswith(third.writer_prefix)]
    assert vouch_new_packs(server).vouched == third_packs
