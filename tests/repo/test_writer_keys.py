"""Writer keys (repo/writermac.py): a machine trusts for dedup only index files of its own namespace
that its writer key authenticates, so another machine that can create names there (Azure's flat
namespace) cannot poison its dedup; the server flags such files; older bundles behave as before.

Stores are the in-memory backend (any name may be created, as an agent's SAS allows on Azure); the
same forgery through a real agent SAS on Azurite is in tests/providers/azure/test_agent_sas.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cloudkeep.errors import ConfigurationError
from cloudkeep.repo import Repository, backup_files, restore
from cloudkeep.repo.confidential import WriterBundle
from cloudkeep.repo.grants import restore_keys
from cloudkeep.repo.index import encode_index_file
from cloudkeep.repo.vouch import vouch_new_packs
from cloudkeep.repo.writer import BlobWriter
from cloudkeep.repo.writermac import TRAILER_SIZE, add_mac, mac_problem, split_mac
from cloudkeep.storage import ObjectStore
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, restored

A, B = "writers/machine-a/", "writers/machine-b/"
COMMON = b"#!/bin/sh\n# a file every machine of the fleet has\n" * 20


@pytest.fixture
def server(store: ObjectStore) -> Repository:
    return Repository.create(
        store, PASSWORD, pack_size=512 * 1024, kdf=FAST_KDF, chunker=SMALL_CHUNKS, version=3
    )


def machine(store: ObjectStore, server: Repository, prefix: str, *, writer_key: bool = True) -> Repository:
    """A machine's repository from its own bundle as it travels (JSON); ``writer_key=False``: a
    bundle from a server older than writer keys."""
    body = server.writer_bundle(prefix).to_json()
    if not writer_key:
        body.pop("writer_key")
    bundle = WriterBundle.from_json(json.loads(json.dumps(body)))
    return Repository.open_writer(store, bundle, writer_prefix=prefix)


def forge_into(
    store: ObjectStore, server: Repository, victim: str, mac_key: bytes | None = None
) -> tuple[bytes, str]:
    """Machine A indexes ``COMMON``'s id in a pack of its own holding other bytes, and creates an
    index file saying so in ``victim``'s namespace (with a MAC under ``mac_key`` if given)."""
    attacker = machine(store, server, A)
    with BlobWriter(attacker, hostname="evil") as writer:
        forged_id, new = writer.save("data", os.urandom(len(COMMON)), attacker.crypter.content_id(COMMON))
        assert new
        writer.close()
    attacker.load_index()
    pack_id = attacker.locate(forged_id).pack_id
    key = victim + "index/" + "f" * 32
    sealed = encode_index_file(attacker.crypter, {pack_id: attacker.index.entries_of(pack_id)})
    attacker.store.put(key, add_mac(mac_key, key, sealed) if mac_key else sealed, if_absent=True)
    return forged_id, key


def victim_tree(tmp_path: Path) -> Path:
    source = tmp_path / "victim"
    source.mkdir()
    (source / "common.sh").write_bytes(COMMON)
    return source


@pytest.mark.parametrize("signed_by_attacker", [False, True], ids=["no-mac", "attackers-own-key"])
def test_compromised_machine_cannot_forge_an_index_file_in_another_namespace(
    store: ObjectStore,
    server: Repository,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    signed_by_attacker: bool,
) -> None:
    """Without a MAC, or with one under the attacker's own writer key, the file is not trusted: the
    victim stores its own copy (warned once per file), restores the true bytes, and the server's
    vouch step names a file with a wrong MAC."""
    attackers_key = server.writer_bundle(A).writer_key
    forged_id, key = forge_into(store, server, B, attackers_key if signed_by_attacker else None)
    with caplog.at_level("WARNING", logger="cloudkeep.repo.repository"):
        victim = machine(store, server, B)
        victim.load_index()  # a second load does not warn again
    assert list(victim.unauthenticated_index_files) == [key]
    assert caplog.text.count(key) == 1 and "not deduplicating against" in caplog.text
    assert forged_id not in victim.index and victim.locate(forged_id).pack_id.startswith(A)
    snap = backup_files(victim, [victim_tree(tmp_path)], hostname="b")
    assert snap.stats["bytes_new"] >= len(COMMON)  # its own copy
    reader = machine(store, server, B)
    assert reader.locate(forged_id).pack_id.startswith(B)  # its own MAC'd index file is trusted
    server.load_index()
    reader.grant_keys(restore_keys(server, snap.id))
    assert restore(reader, snap.id, tmp_path / "out").ok
    assert (restored(tmp_path / "out", tmp_path / "victim") / "common.sh").read_bytes() == COMMON

    result = vouch_new_packs(server)
    assert list(result.forged_index_files) == ([key] if signed_by_attacker else [])
    assert list(server.unauthenticated_index_files) == [key]  # the server checks every writer's files


def test_a_machines_own_index_files_carry_a_mac_only_its_writer_key_verifies(
    store: ObjectStore, server: Repository, tmp_path: Path
) -> None:
    own = machine(store, server, B)
    backup_files(own, [victim_tree(tmp_path)], hostname="b")
    (name,) = [i.key for i in store.list(B + "index/")]
    data = store.get(name)
    sealed, tag = split_mac(data)
    assert tag is not None and len(data) == len(sealed) + TRAILER_SIZE
    assert mac_problem(server.writer_bundle(B).writer_key, name, data) is None
    assert "does not verify" in str(mac_problem(server.writer_bundle(A).writer_key, name, data))
    assert "does not verify" in str(mac_problem(server.writer_bundle(B).writer_key, B + "index/other", data))
    assert "no writer MAC" in str(mac_problem(server.writer_bundle(B).writer_key, name, sealed))
    # Per writer: different keys for different namespaces, none in a bundle without a prefix.
    assert server.writer_bundle(A).writer_key != server.writer_bundle(B).writer_key
    assert server.writer_bundle().writer_key == b"" and "writer_key" not in server.writer_bundle().to_json()
    again = machine(store, server, B)
    assert len(again.index) > 0 and again.unauthenticated_index_files == {}


def test_a_bundle_without_a_writer_key_keeps_todays_behaviour(
    store: ObjectStore, server: Repository, tmp_path: Path
) -> None:
    """From an older server: index files are written without a MAC and the own namespace is trusted
    as before (the gap stays open until the server sends writer keys)."""
    old = machine(store, server, B, writer_key=False)
    assert old.writer_key is None
    backup_files(old, [victim_tree(tmp_path)], hostname="b")
    (name,) = [i.key for i in store.list(B + "index/")]
    assert split_mac(store.get(name))[1] is None
    forged_id, key = forge_into(store, server, B)
    again = machine(store, server, B, writer_key=False)
    assert again.unauthenticated_index_files == {} and key in again.index_files
    # A machine given its key later no longer trusts the unauthenticated files (stores again: dedup
    # is lost once, never data).
    upgraded = machine(store, server, B)
    assert set(upgraded.unauthenticated_index_files) == {name, key} and forged_id not in upgraded.index


def test_a_bundle_with_a_bad_writer_key_is_a_clear_error(server: Repository) -> None:
    body = server.writer_bundle(B).to_json()
    body["writer_key"] = "AAAA"
    with pytest.raises(ConfigurationError, match="wrong writer key size"):
        WriterBundle.from_json(body)


def test_a_forged_listing_of_a_genuine_pack_never_replaces_its_writers_own(
    store: ObjectStore, server: Repository, tmp_path: Path
) -> None:
    """A pack listed twice keeps its first listing: unauthenticated files are loaded last, so the
    server (and the writer) keep the writer's own rows even when the forgery is listed first."""
    own = machine(store, server, B)
    backup_files(own, [victim_tree(tmp_path)], hostname="b")
    own.load_index()
    pack_id = next(p for p in own.index.packs if own.index.entries_of(p)[0].type == "data")
    genuine = own.index.entries_of(pack_id)
    bogus = [e._replace(offset=e.offset + 1) for e in genuine]
    key = B + "index/" + "0" * 32  # listed before the writer's own file
    store.put(key, encode_index_file(own.crypter, {pack_id: bogus}), if_absent=True)
    assert next(i.key for i in store.list(B + "index/")) == key
    server.load_index()
    assert server.index.entries_of(pack_id) == genuine and key in server.unauthenticated_index_files
    assert machine(store, server, B).index.entries_of(pack_id) == genuine
