"""The index: compact columns in memory, binary index files on storage (JSON ones still read)."""

from __future__ import annotations

import gc
import json
import os
import weakref

import pytest

from cloudkeep.errors import IntegrityError
from cloudkeep.repo import Repository, backup_files, check, restore
from cloudkeep.repo.index import (
    Index,
    decode_index_file,
    encode_index_file,
    new_index_key,
    pack_records,
    read_index_file,
)
from cloudkeep.repo.pack import DATA, TREE, BlobEntry
from cloudkeep.storage import ObjectStore
from tests.repo.conftest import PASSWORD, restored

_AAD = b"cloudkeep-index-v1"


def entries(n: int, blob_type: str = DATA) -> list[BlobEntry]:
    return [BlobEntry(blob_type, os.urandom(32), i * 1000, 900 + i, 2000 + i) for i in range(n)]


def test_index_file_roundtrip(repo: Repository) -> None:
    packs = {"p1": entries(3), "writers/m1/p2": entries(2, TREE), "empty": []}
    data = encode_index_file(repo.crypter, packs)
    assert decode_index_file(repo.crypter, "k", data) == packs
    assert b'"packs"' not in repo.crypter.decode(data, _AAD, "k")  # binary, not JSON
    # a backup keeps its packs' records, not their entries, until it writes the index file
    as_records = {pack_id: pack_records(pack) for pack_id, pack in packs.items()}
    plain = repo.crypter.decode(encode_index_file(repo.crypter, as_records), _AAD, "k")
    assert plain == repo.crypter.decode(data, _AAD, "k")
    assert (
        decode_index_file(
            repo.crypter, "k", encode_index_file(repo.crypter, {**packs, "p1": as_records["p1"]})
        )
        == packs
    )


def test_json_index_files_written_before_still_load(repo: Repository, store: ObjectStore) -> None:
    packs = {"p1": entries(2)}
    legacy = {
        "version": 1,
        "packs": [
            {"id": pid, "blobs": [[e.type, e.id.hex(), e.offset, e.length, e.raw_length] for e in es]}
            for pid, es in packs.items()
        ],
    }
    store.put(new_index_key(), repo.crypter.encode(json.dumps(legacy).encode(), _AAD))
    reopened = Repository.open(store, PASSWORD)
    loc = reopened.index.get(packs["p1"][1].id)
    assert loc is not None and loc.pack_id == "p1" and loc.entry == packs["p1"][1]


@pytest.mark.parametrize("cut", [3, 12, 60])
def test_truncated_index_file_is_an_integrity_error(repo: Repository, cut: int) -> None:
    plain = repo.crypter.decode(encode_index_file(repo.crypter, {"p1": entries(2)}), _AAD, "k")
    damaged = repo.crypter.encode(plain[: len(plain) - cut], _AAD)
    with pytest.raises(IntegrityError, match="index file k: malformed"):
        list(read_index_file(repo.crypter, "k", damaged))


def test_malformed_index_file_is_reported_by_check(repo: Repository, store: ObjectStore, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(os.urandom(50_000))
    snap = backup_files(repo, [tmp_path / "src"], hostname="h")
    plain = repo.crypter.decode(encode_index_file(repo.crypter, {"p9": entries(1)}), _AAD, "k")
    store.put("index/broken", repo.crypter.encode(plain[:-7], _AAD))
    report = check(repo)
    assert [p.kind for p in report.problems] == ["bad-index"] and "index/broken" in report.problems[0].object
    store.delete("index/broken")
    restore(Repository.open(store, PASSWORD), snap.id, tmp_path / "out")
    assert (restored(tmp_path / "out", tmp_path / "src") / "f").read_bytes() == (
        tmp_path / "src" / "f"
    ).read_bytes()


def test_index_keeps_first_location_and_repoints_after_removal() -> None:
    index = Index()
    shared = entries(1)[0]
    index.add_pack("old", [shared, *entries(2)])
    moved = BlobEntry(DATA, shared.id, 5, shared.length, shared.raw_length)
    index.add_pack("new", [moved])
    assert index.get(shared.id).pack_id == "old"  # type: ignore[union-attr]
    assert len(index) == 3 and set(index.packs) == {"old", "new"}
    index.remove_packs({"old"})
    loc = index.get(shared.id)
    assert loc is not None and loc.pack_id == "new" and loc.entry == moved
    assert len(index) == 1 and index.packs["new"] == [moved] and "old" not in index.packs


def test_a_reloaded_index_lets_the_old_one_go_at_once(repo: Repository, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Reloading (prune, check, a long-lived agent) frees the index it replaces when it is
    replaced, not at the next full collection: it and its pack view had held each other."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_bytes(os.urandom(5000))
    backup_files(repo, [source], hostname="h")
    repo.load_index()
    assert len(repo.index) > 0
    old = weakref.ref(repo.index)
    gc.disable()
    try:
        repo.load_index()
        assert old() is None
    finally:
        gc.enable()
    assert len(repo.index) > 0 and list(repo.index.packs)


def test_offsets_past_4_gib_widen_the_columns_and_every_row_stays() -> None:
    """Columns are 32-bit; a pack offset past 4 GiB (a huge pack, or a forged index file) widens
    them, the row that overflowed included, and the rows before keep their values."""
    index = Index()
    index.add_rows("p1", [(0, b"a" * 32, 10, 20, 30), (1, b"b" * 32, 2**32 - 1, 2**32 - 1, 5)])
    index.add_rows("p2", [(0, b"c" * 32, 2**32 + 7, 100, 200), (0, b"d" * 32, 9, 8, 7)])
    found = {bytes([c]) * 32: index.get(bytes([c]) * 32) for c in b"abcd"}
    assert [
        (loc.pack_id, loc.entry.offset, loc.entry.length, loc.entry.raw_length)
        for loc in found.values()
        if loc
    ] == [
        ("p1", 10, 20, 30),
        ("p1", 2**32 - 1, 2**32 - 1, 5),
        ("p2", 2**32 + 7, 100, 200),
        ("p2", 9, 8, 7),
    ]
    assert [e.offset for e in index.entries_of("p2")] == [2**32 + 7, 9]
