"""The keys a machine needs for one restore, unwrapped by the server (format 3).

The server holds the private key: it reads the manifest and the trees on the way to the requested
paths (tree packs are small), finds the packs of every blob the restore reads, and unwraps exactly
their data keys. The machine then reads the data itself; the server moves no backup data, and the
machine can decrypt no pack outside that set.
"""

from __future__ import annotations

from functools import partial

from cloudkeep.errors import NotFoundError
from cloudkeep.repo.confidential import PACK_PRELUDE_SIZE
from cloudkeep.repo.pack import pack_key
from cloudkeep.repo.repository import Repository
from cloudkeep.repo.restorer import _requested
from cloudkeep.repo.tree import DIR
from cloudkeep.repo.vouch import vouched_packs


def restore_keys(
    repo: Repository,
    snapshot_id: str,
    paths: list[str] | None = None,
    *,
    trees_only: bool = False,
    legacy: set[str] | None = None,
) -> dict[str, bytes]:
    """Object key → content key for the manifest and every pack a restore of ``paths`` reads.

    ``trees_only``: the packs of the trees only (a browse). Objects written before format 3 have
    no per-object key and are left out (the repository key opens them; docs/format.md,
    "Migration"); their keys go into ``legacy`` when given.
    """
    snapshot = repo.load_snapshot(snapshot_id)
    manifest = repo.snapshot_key(snapshot.id)
    grants: dict[str, bytes] = {}
    content_key = repo.keyring.manifest_content_key(manifest, repo.store.get(manifest))
    if content_key is not None:
        grants[manifest] = content_key
    elif legacy is not None:
        legacy.add(manifest)
    blobs: set[bytes] = set()
    vouched = vouched_packs(repo) if repo.keyring.confidential else set()
    root = bytes.fromhex(snapshot.tree)
    for parts in _requested(paths):
        tree = root
        blobs.add(tree)
        for depth, name in enumerate(parts):
            node = next((n for n in repo.load_tree(tree) if n.name == name), None)
            if node is None:
                raise NotFoundError(f"/{'/'.join(parts)} is not in restore point {snapshot.id}")
            if depth < len(parts) - 1:
                if node.type != DIR or node.subtree is None:
                    raise NotFoundError(f"/{'/'.join(parts)} is not in restore point {snapshot.id}")
                tree = node.subtree
                blobs.add(tree)
            else:
                if not trees_only:
                    blobs.update(node.content)
                if node.subtree is not None:
                    _subtree_blobs(repo, node.subtree, blobs, trees_only)
        if not parts:
            _subtree_blobs(repo, root, blobs, trees_only)
    for pack_id in sorted({_trusted_copy(repo, blob_id, manifest, vouched) for blob_id in blobs}):
        data_key = repo.keyring.pack_data_key(pack_id, partial(_prelude, repo, pack_id))
        if data_key is not None:
            grants[pack_key(pack_id)] = data_key
        elif legacy is not None:
            legacy.add(pack_key(pack_id))
    return grants


def _trusted_copy(repo: Repository, blob_id: bytes, manifest: str, vouched: set[str]) -> str:
    """The pack to read a blob from: where several hold it, one the restore point's own writer
    wrote or one the server vouched for — what that writer deduplicated against (repo/vouch.py) —
    rather than another writer's unverified copy."""
    copies = repo.index.locations(blob_id) + repo.doomed.locations(blob_id)
    if len(copies) > 1:
        writer = manifest[: manifest.find("snapshots/")] if manifest.startswith("writers/") else None
        for copy in copies:
            if (writer and copy.pack_id.startswith(writer)) or copy.pack_id in vouched:
                return copy.pack_id
    return repo.locate(blob_id).pack_id


def _prelude(repo: Repository, pack_id: str) -> bytes:
    return repo.store.get_range(pack_key(pack_id), 0, PACK_PRELUDE_SIZE)


def _subtree_blobs(repo: Repository, tree_id: bytes, blobs: set[bytes], trees_only: bool = False) -> None:
    stack = [tree_id]
    seen: set[bytes] = set()
    while stack:
        tree = stack.pop()
        if tree in seen:
            continue
        seen.add(tree)
        blobs.add(tree)
        for node in repo.load_tree(tree):
            if not trees_only:
                blobs.update(node.content)
            if node.subtree is not None:
                stack.append(node.subtree)
