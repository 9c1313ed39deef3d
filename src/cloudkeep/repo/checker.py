"""``check``: verify structure (and with ``read_data`` every blob) and say which restore points are hurt.

Structure: every restore-point manifest decrypts and belongs under its id, every tree loads,
every referenced blob is in the index, and every indexed pack exists with at least the size
the index implies. Data: each pack is downloaded, its BLAKE3 name verified, and each blob
decrypted and checked against its id. Each problem names the damaged object and the ids of
the snapshots that reference it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cloudkeep.compat import UTC
from cloudkeep.errors import CloudkeepError, IntegrityError, NotFoundError
from cloudkeep.repo.index import INDEX_PREFIX, encode_index_file, new_index_key
from cloudkeep.repo.lock import maintenance_lock
from cloudkeep.repo.pack import BlobEntry, pack_id_from_key, pack_id_of, pack_key, read_header
from cloudkeep.repo.repository import Repository
from cloudkeep.repo.snapshot import SNAPSHOT_PREFIX
from cloudkeep.repo.tree import DIR
from cloudkeep.storage.base import ObjectNotFoundError


@dataclass
class Problem:
    # missing-pack truncated-pack corrupt-pack corrupt-blob missing-blob bad-tree bad-snapshot bad-index
    # bad-marker
    kind: str
    object: str
    message: str
    snapshots: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        hurt = f" (affects restore points: {', '.join(self.snapshots)})" if self.snapshots else ""
        return f"{self.kind}: {self.object}: {self.message}{hurt}"


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    snapshots: int = 0
    packs: int = 0
    packs_read: int = 0
    blobs: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check(repo: Repository, *, read_data: bool = False, read_data_subset: float | None = None) -> CheckReport:
    report = CheckReport()
    bad_blobs: dict[bytes, Problem] = {}  # blob id → the problem that makes it unreadable
    _check_index_files(repo, report)
    # Restore points listed before the index is loaded have their index files in it: one a backup
    # commits meanwhile is not reported as needing blobs the index lacks.
    snapshot_ids = repo.snapshot_ids()
    repo.load_index()
    for key, why in sorted(repo.unreadable_markers.items()):
        report.problems.append(
            Problem(
                "bad-marker", key, f"{why}; prune keeps the packs it lists (`repair index` sets it aside)"
            )
        )
    stored = {pack_id_from_key(info.key): info.size for info in repo.list_everywhere("data/")}
    packs = {**repo.doomed.packs, **repo.index.packs}
    report.packs, report.blobs = len(packs), len(repo.index) + len(repo.doomed)
    for pack_id, entries in packs.items():
        problem = _pack_structure_problem(pack_id, entries, stored)
        if problem:
            report.problems.append(problem)
            for entry in entries:
                bad_blobs.setdefault(entry.id, problem)
    for pack_id in stored.keys() - packs.keys():
        report.warnings.append(
            f"pack {pack_id} is not in the index (left by an interrupted backup; prune removes it)"
        )
    if read_data or read_data_subset:
        chosen = [p for p in packs if p in stored and not any(e.id in bad_blobs for e in packs[p][:1])]
        if read_data_subset is not None and not read_data:
            chosen = random.sample(chosen, max(1, round(len(chosen) * read_data_subset))) if chosen else []
        with ThreadPoolExecutor(max_workers=4) as pool:
            for problems in pool.map(lambda p: _read_pack(repo, p, packs[p]), chosen):
                report.packs_read += 1
                for blob_id, problem in problems:
                    if blob_id is None or blob_id not in bad_blobs:
                        report.problems.append(problem) if problem not in report.problems else None
                    if blob_id is not None:
                        bad_blobs.setdefault(blob_id, problem)
    _check_snapshots(repo, report, bad_blobs, snapshot_ids)
    _check_snapshot_copies(repo, report)
    return report


def _check_snapshot_copies(repo: Repository, report: CheckReport) -> None:
    """One id in several namespaces: a copy (identical for content ids), or a planted legacy name."""
    keys: dict[str, list[str]] = defaultdict(list)
    for info in repo.list_everywhere(SNAPSHOT_PREFIX):
        keys[info.key.rsplit("/", 1)[-1]].append(info.key)
    for sid, where in keys.items():
        if len(where) > 1:
            report.warnings.append(f"restore point {sid} is stored {len(where)} times: {', '.join(where)}")


def _check_index_files(repo: Repository, report: CheckReport) -> None:
    for info in repo.list_everywhere(INDEX_PREFIX):
        try:
            repo.read_index_file(info.key, repo.store.get(info.key))
        except (CloudkeepError, ValueError, KeyError) as exc:
            report.problems.append(
                Problem("bad-index", info.key, f"{exc}; the packs it lists are unknown until `repair index`")
            )


def _pack_structure_problem(pack_id: str, entries: list[BlobEntry], stored: dict[str, int]) -> Problem | None:
    if pack_id not in stored:
        return Problem("missing-pack", pack_key(pack_id), "pack is in the index but not in storage")
    needed = max((e.offset + e.length for e in entries), default=0)
    if stored[pack_id] < needed + 4:
        return Problem(
            "truncated-pack", pack_key(pack_id), f"{stored[pack_id]} bytes, index needs more than {needed}"
        )
    return None


def _read_pack(
    repo: Repository, pack_id: str, entries: list[BlobEntry]
) -> list[tuple[bytes | None, Problem]]:
    key = pack_key(pack_id)
    try:
        body = repo.store.get(key)
    except ObjectNotFoundError:
        return [(None, Problem("missing-pack", key, "pack vanished during check"))]
    found: list[tuple[bytes | None, Problem]] = []
    if pack_id_of(body) != pack_id.rsplit("/", 1)[-1]:
        found.append((None, Problem("corrupt-pack", key, "content does not match the pack's name (hash)")))
    view = memoryview(body)
    for entry in entries:
        try:
            repo.decode_blob(
                entry, pack_id, view[entry.offset : entry.offset + entry.length], reuse_buffer=True
            )
        except IntegrityError as exc:
            found.append((entry.id, Problem("corrupt-blob", f"{key} blob {entry.id.hex()}", exc.message)))
    return found


def _check_snapshots(
    repo: Repository, report: CheckReport, bad_blobs: dict[bytes, Problem], snapshot_ids: list[str]
) -> None:
    affected: dict[int, set[str]] = defaultdict(set)  # id(problem) → snapshot ids
    by_id = {id(p): p for p in bad_blobs.values()}
    memo: dict[bytes, set[int]] = {}  # tree id → problems found below it (trees are shared)

    def open_tree(tree_id: bytes, where: str) -> tuple[set[int], list[tuple[bytes, str]]]:
        """A tree's own problems (its blobs, or the tree itself) and the subtrees below it."""
        found: set[int] = set()
        if tree_id in bad_blobs:
            found.add(id(bad_blobs[tree_id]))
            return found, []
        try:
            nodes = repo.load_tree(tree_id)
        except CloudkeepError as exc:
            problem = Problem("bad-tree", f"tree {tree_id.hex()} ({where})", str(exc))
            bad_blobs[tree_id] = problem
            by_id[id(problem)] = problem
            report.problems.append(problem)
            found.add(id(problem))
            return found, []
        subtrees: list[tuple[bytes, str]] = []
        for node in nodes:
            path = f"{where.rstrip('/')}/{node.name}"
            for blob_id in node.content:
                if blob_id in bad_blobs:
                    found.add(id(bad_blobs[blob_id]))
                elif blob_id not in repo.index and blob_id not in repo.doomed:
                    problem = Problem(
                        "missing-blob", f"blob {blob_id.hex()}", f"needed by {path}, not in the index"
                    )
                    bad_blobs[blob_id] = problem
                    by_id[id(problem)] = problem
                    report.problems.append(problem)
                    found.add(id(problem))
            if node.type == DIR and node.subtree is not None:
                subtrees.append((node.subtree, path))
        return found, subtrees

    def visit(root: bytes, where: str) -> set[int]:
        """Problems at or below a tree, post-order with an explicit stack: a restore point (even a
        crafted one) may be deeper than Python's recursion limit."""
        if root in memo:
            return memo[root]
        found, subtrees = open_tree(root, where)
        stack = [(root, found, iter(subtrees))]
        while stack:
            tree_id, found, pending = stack[-1]
            child = next(pending, None)
            if child is None:
                stack.pop()
                memo[tree_id] = found
                if stack:
                    stack[-1][1].update(found)
            elif child[0] in memo:
                found.update(memo[child[0]])
            else:
                child_found, child_subtrees = open_tree(*child)
                stack.append((child[0], child_found, iter(child_subtrees)))
        return memo[root]

    for sid in snapshot_ids:
        try:
            key = repo.snapshot_key(sid)
        except NotFoundError:
            continue  # forgotten since it was listed
        try:
            snap = repo.read_snapshot(key)  # proves the manifest belongs under its id
        except ObjectNotFoundError:
            continue
        except (CloudkeepError, ValueError, KeyError, TypeError) as exc:
            report.snapshots += 1
            message = exc.message if isinstance(exc, CloudkeepError) else str(exc)
            report.problems.append(
                Problem("bad-snapshot", key, f"{message} (`repair snapshots` sets it aside)", [sid])
            )
            continue
        report.snapshots += 1
        if snap.legacy:
            report.warnings.append(
                f"restore point manifest {key} is a version 1 manifest: its id is not bound to its "
                "content, so a manifest copied over it would go unnoticed here (the server's catalog "
                "still pins what it accepted)"
            )
        for pid in visit(bytes.fromhex(snap.tree), "/"):
            affected[pid].add(sid)
    for pid, sids in affected.items():
        by_id[pid].snapshots = sorted(sids)
    for problem in by_id.values():
        if problem not in report.problems:
            report.problems.append(problem)


def rebuild_index(repo: Repository) -> int:
    """Recreate the index from the pack headers (after index files were lost); returns packs indexed.

    Holds the maintenance lock: a prune sweeping meanwhile could see a pack named again after
    it dropped it from the index.
    """
    repo.require_full_access("rebuild-index")
    with maintenance_lock(repo, "rebuild-index", now=datetime.now(UTC), grace=timedelta(hours=1)):
        return _rebuild_index(repo)


def _rebuild_index(repo: Repository) -> int:
    old = [info.key for info in repo.list_everywhere(INDEX_PREFIX)]
    packs: dict[str, list[BlobEntry]] = {}
    problems: list[str] = []

    def header(info_key: str, size: int) -> tuple[str, list[BlobEntry] | None]:
        pack_id = pack_id_from_key(info_key)
        tail_len = min(size, 256 * 1024)
        try:
            tail = repo.store.get_range(info_key, size - tail_len, tail_len)
            crypter = repo.pack_crypter(pack_id)
            try:
                return pack_id, read_header(crypter, pack_id, tail, size)
            except IntegrityError:
                return pack_id, read_header(crypter, pack_id, repo.store.get(info_key), size)
        except CloudkeepError as exc:
            problems.append(f"{info_key}: {exc}")
            return pack_id, None

    infos = list(repo.list_everywhere("data/"))
    with ThreadPoolExecutor(max_workers=8) as pool:
        for pack_id, entries in pool.map(lambda i: header(i.key, i.size), infos):
            if entries is not None:
                packs[pack_id] = entries
    repo.store.put(new_index_key(), encode_index_file(repo.crypter, packs))
    for key in old:
        repo.store.delete_or_hide(key)
    repo.load_index()
    return len(packs)
