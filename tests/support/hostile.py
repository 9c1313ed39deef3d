"""Hostile restore points, written the way a compromised machine could write its own manifests.

Tree blobs are encoded here as raw JSON (not through ``encode_tree``) so that names and node
orders the archiver would never produce — ``..``, ``a/b``, NUL, two entries of the same name —
reach the repository exactly as crafted. ``outside_state`` records everything around a restore
target so a test can prove a restore changed nothing outside it.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloudkeep.repo.pack import DATA, TREE
from cloudkeep.repo.repository import Repository
from cloudkeep.repo.snapshot import Snapshot, new_snapshot_id
from cloudkeep.repo.writer import BlobWriter

# A node as JSON; ``children`` (a list of such dicts) makes it a directory with a subtree.
Spec = dict[str, Any]


@dataclass
class Crafter:
    """Saves data and tree blobs for hand-written trees, then one manifest pointing at the root."""

    repo: Repository
    writer: BlobWriter = field(init=False)

    def __post_init__(self) -> None:
        self.writer = BlobWriter(self.repo, hostname="crafted")

    def data(self, content: bytes) -> str:
        return self.writer.save(DATA, content)[0].hex()

    def tree(self, specs: list[Spec]) -> str:
        nodes = []
        for spec in specs:
            node = {k: v for k, v in spec.items() if k not in ("children", "data")}
            node.setdefault("mode", 0o644 if node.get("type") != "dir" else 0o755)
            node.setdefault("mtime_ns", 1_600_000_000_000_000_000)
            if "data" in spec:
                node["content"] = [self.data(spec["data"])] if spec["data"] else []
                node["size"] = len(spec["data"])
            if "children" in spec:
                node["subtree"] = self.tree(spec["children"])
            nodes.append(node)
        raw = json.dumps({"nodes": nodes}, separators=(",", ":")).encode()
        return self.writer.save(TREE, raw)[0].hex()

    def snapshot(self, specs: list[Spec], *, kind: str = "files") -> str:
        root = self.tree(specs)
        self.writer.close()
        snap = Snapshot(
            id=new_snapshot_id(),
            time=datetime(2026, 1, 1, tzinfo=UTC),
            hostname="crafted",
            tags=[],
            paths=["/"],
            kind=kind,
            tree=root,
        )
        self.repo.save_snapshot(snap)
        return snap.id


def craft(repo: Repository, specs: list[Spec]) -> str:
    """One restore point whose root directory holds ``specs``; returns its snapshot id."""
    return Crafter(repo).snapshot(specs)


def file(name: str, data: bytes = b"evil\n", **extra: Any) -> Spec:
    return {"name": name, "type": "file", "data": data, **extra}


def folder(name: str, children: list[Spec], **extra: Any) -> Spec:
    return {"name": name, "type": "dir", "children": children, **extra}


def symlink(name: str, target: str, **extra: Any) -> Spec:
    return {"name": name, "type": "symlink", "mode": 0o777, "target": target, **extra}


def fifo(name: str, **extra: Any) -> Spec:
    return {"name": name, "type": "fifo", "mode": 0o666, **extra}


def _describe(path: str) -> tuple[Any, ...]:
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as fh:
            body: Any = fh.read()
    elif stat.S_ISLNK(st.st_mode):
        body = os.readlink(path)
    else:
        body = None
    try:
        xattrs = sorted(os.listxattr(path, follow_symlinks=False))
    except OSError:
        xattrs = []
    return (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns,
            st.st_nlink, body, xattrs)  # fmt: skip


def outside_state(root: Path, *, skip: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``root`` except ``skip`` (the restore target) and what is inside it."""
    found = {".": _describe(str(root))}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(dirpath, d) != skip]
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, root)] = _describe(path)
    return found


def sandbox(tmp: Path) -> tuple[Path, Path, Callable[[], dict[str, tuple[Any, ...]]]]:
    """A folder with things worth attacking and a restore target three levels inside it.

    Returns ``(outside, target, state)``; every escape a crafted name can reach (``..`` chains,
    symlinks to ``outside``) lands in ``outside``, which ``state()`` snapshots.
    """
    outside = tmp / "outside"
    (outside / "victim-dir").mkdir(parents=True)
    (outside / "victim.txt").write_text("original\n")
    (outside / "victim-linked.txt").write_text("original linked\n")
    os.chmod(outside / "victim.txt", 0o600)
    target = outside / "a" / "b" / "target"
    target.mkdir(parents=True)
    return outside, target, lambda: outside_state(outside, skip=target)
