"""Browsing a restore point: look a path up, walk or list its trees, find names, stream one file.

Read-only over the repository: paths are only shown or matched here, never used on the local
file system (that is ``restorer``'s job).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from cloudkeep.errors import NotFoundError
from cloudkeep.pathnames import display, is_text
from cloudkeep.repo.masks import matches
from cloudkeep.repo.repository import Repository
from cloudkeep.repo.targetfs import os_error
from cloudkeep.repo.tree import DIR, FILE, Node, TreeEntry


def _norm(path: str) -> str:
    return "/" + "/".join(p for p in path.split("/") if p)


def _root(repo: Repository, snapshot_id: str) -> bytes:
    return bytes.fromhex(repo.load_snapshot(snapshot_id).tree)


def lookup(repo: Repository, snapshot_id: str, path: str) -> Node:
    """The node at ``path`` inside the snapshot (``/`` is a synthetic root directory)."""
    node = Node(name="", type=DIR, mode=0o755, subtree=_root(repo, snapshot_id))
    for part in [p for p in path.split("/") if p]:
        if node.type != DIR or node.subtree is None:
            raise NotFoundError(f"{path} is not in restore point {snapshot_id}")
        found = next((n for n in repo.load_tree(node.subtree) if n.name == part), None)
        if found is None:
            raise NotFoundError(f"{path} is not in restore point {snapshot_id}", hint="browse it with `ls`")
        node = found
    return node


def resolve_path(repo: Repository, snapshot_id: str, path: str) -> str:
    """The exact path inside the snapshot for ``path``, which may name entries the way messages show
    them (``cloudkeep.pathnames.display``: bytes that are not UTF-8 as ``\\xNN``). A component
    that exists literally wins; otherwise the one entry whose displayed name matches is taken."""
    tree_id: bytes | None = _root(repo, snapshot_id)
    exact: list[str] = []
    for part in [p for p in path.split("/") if p]:
        nodes = repo.load_tree(tree_id) if tree_id is not None else []
        found = next((n for n in nodes if n.name == part), None)
        if found is None:
            shown = [n for n in nodes if not is_text(n.name) and display(n.name) == part]
            found = shown[0] if len(shown) == 1 else None
        if found is None:
            return path  # not there: ``lookup`` says so with the path as given
        exact.append(found.name)
        tree_id = found.subtree if found.type == DIR else None
    return "/" + "/".join(exact)


def walk(repo: Repository, tree_id: bytes, prefix: str) -> Iterator[tuple[str, Node]]:
    """Depth-first (path, node) for everything below a tree; no recursion (any depth)."""
    stack = [(iter(repo.load_tree(tree_id)), prefix.rstrip("/"))]
    while stack:
        nodes, folder = stack[-1]
        node = next(nodes, None)
        if node is None:
            stack.pop()
            continue
        path = f"{folder}/{node.name}"
        yield path, node
        if node.type == DIR and node.subtree is not None:
            stack.append((iter(repo.load_tree(node.subtree)), path))


def list_tree(
    repo: Repository, snapshot_id: str, path: str = "/", *, recursive: bool = False
) -> Iterator[TreeEntry]:
    node = lookup(repo, snapshot_id, path)
    path = _norm(path)
    if node.type != DIR:
        yield TreeEntry.of(path, node)
        return
    assert node.subtree is not None
    if recursive:
        for sub_path, sub in walk(repo, node.subtree, path):
            yield TreeEntry.of(sub_path, sub)
    else:
        for sub in repo.load_tree(node.subtree):
            yield TreeEntry.of(f"{path.rstrip('/')}/{sub.name}", sub)


def find(
    repo: Repository, pattern: str, *, snapshot_ids: list[str] | None = None
) -> Iterator[tuple[str, TreeEntry]]:
    """Entries whose name (or, for patterns with ``/``, whole path) matches a glob, across snapshots."""
    ids = (
        snapshot_ids
        if snapshot_ids is not None
        else [s.id for s in sorted(repo.snapshots(), key=lambda s: s.time)]
    )
    for sid in ids:
        snap = repo.load_snapshot(sid)
        for path, node in walk(repo, bytes.fromhex(snap.tree), "/"):
            if matches(pattern, path):  # the same globs as backup masks
                yield snap.id, TreeEntry.of(path, node)


def cat_file(repo: Repository, snapshot_id: str, path: str, out: BinaryIO) -> int:
    """Stream one file's content to a binary stream (stdout), verifying every chunk; returns bytes."""
    node = lookup(repo, snapshot_id, path)
    if node.type != FILE:
        raise NotFoundError(f"{path} in restore point {snapshot_id} is a {node.type}, not a file")
    written = 0
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ck-cat")
    try:
        # Read ahead a few chunks while writing the current one; memory stays at ~8 chunks.
        pending = [pool.submit(repo.load_blob, b) for b in node.content[:8]]
        next_index = len(pending)
        while pending:
            data = pending.pop(0).result()
            if next_index < len(node.content):
                pending.append(pool.submit(repo.load_blob, node.content[next_index]))
                next_index += 1
            try:
                out.write(data)
            except OSError as exc:
                raise os_error(exc, getattr(out, "name", "output")) from exc
            written += len(data)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return written
