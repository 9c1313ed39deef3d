"""Decoded trees are kept for the next look-up, bounded by nodes as well as by trees: a walk over a
machine with large folders (prune, check, a restore's plan) must not keep every node it read."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudkeep.repo import Repository, backup_files
from cloudkeep.repo import repository as repository_module
from cloudkeep.repo.tree import decode_tree

from .conftest import subtree_of


def test_the_tree_cache_is_bounded_by_nodes_and_still_serves_small_trees(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "src"
    (source / "big").mkdir(parents=True)
    for i in range(40):
        (source / "big" / f"m{i:02}").write_text(f"message {i}\n")
    for name in ("a", "b", "c"):
        (source / name).mkdir()
        (source / name / "one.txt").write_text(name)
    snap = backup_files(repo, [source])
    big, small = subtree_of(repo, snap.tree, source / "big"), subtree_of(repo, snap.tree, source / "a")
    monkeypatch.setattr(repository_module, "TREE_CACHE_NODES", 30)
    repo.close()  # (empties the cache the walk above filled)

    nodes = repo.load_tree(big)
    assert [n.name for n in nodes] == [f"m{i:02}" for i in range(40)]
    assert nodes == decode_tree(repo.load_blob(big))
    assert repo.load_tree(big) is not nodes, "a tree larger than the bound was kept"
    first = repo.load_tree(small)
    assert repo.load_tree(small) is first  # small trees are still kept
    repo.load_tree(big)
    assert repo.load_tree(small) is first, "a tree too large to keep pushed the small ones out"
    for name in ("b", "c"):
        repo.load_tree(subtree_of(repo, snap.tree, source / name))
    assert repo._tree_cache_nodes == sum(len(n) for n in repo._tree_cache.values()) <= 30

    assert len(repo._tree_cache) > 2
    monkeypatch.setattr(repository_module, "TREE_CACHE_TREES", 2)
    repo.load_tree(big)  # a tree read anew: the bounds are applied
    assert len(repo._tree_cache) <= 2
