"""Damage is contained: one damaged manifest, prune marker, index file or pack hurts only what
depends on it; `check` names it; prune refuses or stays safe; `repair` rebuilds what it can."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudkeep.repo import check, list_snapshots, prune, restore
from cloudkeep.repo.pack import pack_key
from cloudkeep.repo.prune import PruneRefusedError
from cloudkeep.repo.repair import LOST_AND_FOUND, REPAIRED_TAG, repair_index, repair_snapshots
from cloudkeep.storage import ObjectStore
from tests.repo.prune_world import HOUR, KIB, World, blob, store_now, write_files


def two_points(world: World, tmp: Path) -> tuple[str, str]:
    first = world.backup(write_files(tmp / "A", {"a.bin": blob(1, 200 * KIB), "x": blob(2, 40 * KIB)}))
    second = world.backup(write_files(tmp / "B", {"b.bin": blob(3, 200 * KIB)}))
    return first, second


def damage(store: ObjectStore, key: str) -> None:
    data = bytearray(store.get(key))
    data[len(data) // 2] ^= 0xFF
    store.put(key, bytes(data))


def kinds(world: World) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for problem in check(world.open(), read_data=True).problems:
        found.setdefault(problem.kind, []).append(problem.object)
    return found


def test_damaged_manifest(store: ObjectStore, tmp_path: Path) -> None:
    world = World(store, tmp_path)
    bad, good = two_points(world, tmp_path)
    key = world.open().snapshot_key(bad)
    damage(store, key)
    world.expected.pop(bad)
    repo = world.open()  # opening, listing and backing up still work
    assert [s.id for s in list_snapshots(repo)] == [good] and key in repo.unreadable_snapshots
    world.backup(tmp_path / "B")
    restore(world.open(), good, tmp_path / "out")
    assert kinds(world) == {"bad-snapshot": [key]}
    t0 = store_now(store)
    with pytest.raises(PruneRefusedError, match=key) as refused:
        prune(world.open(), now=t0)
    assert "repair" in str(refused.value)
    report = repair_snapshots(world.open(), now=t0)
    assert report.moved_aside == [key] and store.stat(LOST_AND_FOUND + key) is not None
    prune(world.open(), now=t0)
    prune(world.open(), now=t0 + 2 * HOUR)
    world.verify()


def test_damaged_prune_marker(store: ObjectStore, tmp_path: Path) -> None:
    world = World(store, tmp_path)
    gone, _ = two_points(world, tmp_path)
    world.forget(gone)
    t0 = store_now(store)
    assert prune(world.open(), now=t0).packs_marked > 0
    (marker,) = [i.key for i in store.list("prune/")]
    damage(store, marker)
    before = {i.key for i in store.list("data/")}
    repo = world.open()  # opening works; the marker's packs are simply not known to be doomed
    assert marker in repo.unreadable_markers
    world.backup(tmp_path / "A")  # may deduplicate against those packs: they must then survive
    assert kinds(world) == {"bad-marker": [marker]}
    result = prune(world.open(), now=t0 + 2 * HOUR)
    assert result.packs_deleted == 0 and any(marker in w for w in result.warnings)
    assert before <= {i.key for i in store.list("data/")}  # nothing deleted on an unreadable mark
    assert repair_index(world.open(), now=t0 + 2 * HOUR).moved_aside == [marker]
    for h in (4, 6):
        prune(world.open(), now=t0 + h * HOUR)
    world.verify()


def test_damaged_index_file(store: ObjectStore, tmp_path: Path) -> None:
    world = World(store, tmp_path)
    two_points(world, tmp_path)
    index_files = sorted(i.key for i in store.list("index/"))
    damage(store, index_files[0])
    repo = world.open()
    assert index_files[0] in repo.unreadable_index_files
    assert kinds(world).get("bad-index") == [index_files[0]]
    t0 = store_now(store)
    with pytest.raises(PruneRefusedError, match=index_files[0]):
        prune(world.open(), now=t0)  # its packs look unindexed: marking them would lose data
    report = repair_index(world.open(), now=t0)
    assert report.packs_recovered > 0 and report.moved_aside == [index_files[0]]
    world.verify()
    snap = world.backup(tmp_path / "A")
    assert world.open().load_snapshot(snap).stats["bytes_new"] < 4 * KIB  # only trees: data deduplicated
    prune(world.open(), now=t0)
    prune(world.open(), now=t0 + 2 * HOUR)
    world.verify()


def test_missing_pack(store: ObjectStore, tmp_path: Path) -> None:
    world = World(store, tmp_path)
    hurt, fine = two_points(world, tmp_path)
    repo = world.open()
    tree = repo.load_tree(bytes.fromhex(repo.load_snapshot(hurt).tree))
    while tree[0].subtree is not None:  # down to the source folder's files
        tree = repo.load_tree(tree[0].subtree)
    lost = next(n for n in tree if n.name == "x")
    pack_id = repo.locate(lost.content[0]).pack_id
    store.delete(pack_key(pack_id))
    problems = check(world.open()).problems
    missing = [p for p in problems if p.kind == "missing-pack"]
    assert missing and missing[0].object == pack_key(pack_id) and hurt in missing[0].snapshots
    assert fine not in missing[0].snapshots
    report = repair_index(world.open())
    assert report.packs_dropped == [pack_id]
    fixed = repair_snapshots(world.open(), rewrite=True)
    new_id = fixed.rewritten[hurt]
    assert any(p.endswith("/x") for p in fixed.dropped_paths[hurt])
    assert store.stat(LOST_AND_FOUND + world.open().snapshot_key(new_id).replace(new_id, hurt)) is not None
    repaired = world.open().load_snapshot(new_id)
    assert REPAIRED_TAG in repaired.tags and repaired.stats["repaired_from"] == hurt
    assert check(world.open(), read_data=True).ok
    world.expected.pop(hurt)
    world.verify()


def test_check_and_repair_walk_a_restore_point_deeper_than_the_recursion_limit(store: ObjectStore) -> None:
    """A crafted (or merely very deep) restore point must not crash `check` or `repair --rewrite`
    with RecursionError: both walk trees with an explicit stack."""
    from cloudkeep.repo import Repository
    from cloudkeep.repo.crypto import KdfParams
    from tests.support.hostile import Crafter, file

    repo = Repository.create(store, "pw", kdf=KdfParams(n=2**10))
    crafter = Crafter(repo)  # bottom up, so that building the chain does not recurse either
    subtree = crafter.tree([file("kept.txt"), {"name": "lost.bin", "type": "file", "content": ["ab" * 32]}])
    for _ in range(1499):
        subtree = crafter.tree([{"name": "d", "type": "dir", "subtree": subtree}])
    snapshot_id = crafter.snapshot([{"name": "d", "type": "dir", "subtree": subtree}])
    deepest = "/d" * 1500
    problems = check(repo).problems
    assert [p.kind for p in problems] == ["missing-blob"]
    assert deepest + "/lost.bin" in problems[0].message and problems[0].snapshots == [snapshot_id]
    fixed = repair_snapshots(repo, rewrite=True)
    assert fixed.dropped_paths[snapshot_id] == [deepest + "/lost.bin"]
    assert check(repo, read_data=True).ok
    assert [s.stats["repaired_from"] for s in list_snapshots(repo)] == [snapshot_id]
