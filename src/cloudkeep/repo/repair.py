"""``repair``: rebuild what can be rebuilt after damage, and set aside (never delete) what cannot.

- ``repair_index``: index entries for packs no readable index file names are recovered from the
  packs' own headers; entries naming packs that are gone are dropped (so backups stop
  deduplicating against them); unreadable index files and prune markers are moved aside.
- ``repair_snapshots``: damaged manifests are moved aside; with ``rewrite=True``, restore points
  that reference missing blobs or unreadable trees are written again without the files and
  folders concerned (recorded in the new manifest's stats), and the originals are moved aside.

What is moved aside goes to ``lost+found/<original key>``, byte for byte, for a human or a later
tool to look at. Both commands hold the maintenance lock (no prune runs meanwhile) and run with
the repository's full credential.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cloudkeep.compat import UTC, zip_strict
from cloudkeep.errors import CloudkeepError, IntegrityError
from cloudkeep.repo.index import encode_index_file, new_index_key
from cloudkeep.repo.lock import maintenance_lock
from cloudkeep.repo.pack import TREE, BlobEntry, pack_id_from_key, read_header
from cloudkeep.repo.repository import Repository
from cloudkeep.repo.snapshot import SNAPSHOT_PREFIX, Snapshot, new_snapshot_id
from cloudkeep.repo.tree import DIR, Node, encode_tree
from cloudkeep.repo.writer import BlobWriter
from cloudkeep.storage.base import ObjectInfo, ObjectLockedError

LOST_AND_FOUND = "lost+found/"
REPAIRED_TAG = "repaired"


@dataclass
class RepairReport:
    packs_recovered: int = 0  # packs indexed again from their headers
    packs_dropped: list[str] = field(default_factory=list)  # indexed packs missing from storage
    moved_aside: list[str] = field(default_factory=list)  # keys now under lost+found/
    rewritten: dict[str, str] = field(default_factory=dict)  # old restore point id → new id
    dropped_paths: dict[str, list[str]] = field(default_factory=dict)  # old id → paths left out
    problems: list[str] = field(default_factory=list)  # what could not be repaired

    @property
    def changed(self) -> bool:
        return bool(self.packs_recovered or self.packs_dropped or self.moved_aside or self.rewritten)


def move_aside(repo: Repository, key: str, report: RepairReport) -> bool:
    """Copy ``key`` under ``lost+found/`` and remove the original; ``False`` if it is locked."""
    try:
        repo.store.put(LOST_AND_FOUND + key, repo.store.get(key))
        repo.store.delete(key)
    except ObjectLockedError:
        report.problems.append(f"{key} is under retention and stays in place")
        return False
    report.moved_aside.append(key)
    return True


def repair_index(
    repo: Repository, *, now: datetime | None = None, grace: timedelta = timedelta(hours=1)
) -> RepairReport:
    repo.require_full_access("repair index")
    report = RepairReport()
    with maintenance_lock(repo, "repair index", now=now or datetime.now(UTC), grace=grace):
        repo.load_index()
        bad_files = dict(repo.unreadable_index_files)
        bad_markers = dict(repo.unreadable_markers)
        old_files = set(repo.index_files) - set(bad_files)
        stored = {pack_id_from_key(info.key): info for info in repo.list_everywhere("data/")}
        packs: dict[str, list[BlobEntry]] = {}
        for pack_id, entries in [*repo.index.pack_entries(), *repo.doomed.pack_entries()]:
            if pack_id in stored:
                packs[pack_id] = entries
            else:
                report.packs_dropped.append(pack_id)
        unknown = [info for pack_id, info in stored.items() if pack_id not in packs]
        with ThreadPoolExecutor(max_workers=8) as pool:
            headers = pool.map(lambda i: _header(repo, i, report), unknown)
            for info, header in zip_strict(unknown, headers):
                if header is not None:
                    packs[pack_id_from_key(info.key)] = header
                    report.packs_recovered += 1
        if report.packs_recovered or report.packs_dropped or bad_files:
            # The new file first: until the old ones go, both say the same about surviving packs.
            repo.store.put(new_index_key(), encode_index_file(repo.crypter, packs))
            for key in sorted(old_files):
                repo.store.delete_or_hide(key)
            for key in sorted(bad_files):
                move_aside(repo, key, report)
        for key in sorted(bad_markers):  # its packs become ordinary packs again: prune re-judges them
            move_aside(repo, key, report)
    repo.load_index()
    return report


def _header(repo: Repository, info: ObjectInfo, report: RepairReport) -> list[BlobEntry] | None:
    pack_id = pack_id_from_key(info.key)
    tail_len = min(info.size, 256 * 1024)
    try:
        tail = repo.store.get_range(info.key, info.size - tail_len, tail_len)
        try:
            return read_header(repo.pack_crypter(pack_id), pack_id, tail, info.size)
        except IntegrityError:  # a header longer than the tail read
            return read_header(repo.pack_crypter(pack_id), pack_id, repo.store.get(info.key), info.size)
    except CloudkeepError as exc:
        report.problems.append(f"{info.key}: header unreadable, not indexed ({exc})")
        return None


def repair_snapshots(
    repo: Repository,
    *,
    rewrite: bool = False,
    now: datetime | None = None,
    grace: timedelta = timedelta(hours=1),
) -> RepairReport:
    repo.require_full_access("repair snapshots")
    report = RepairReport()
    with maintenance_lock(repo, "repair snapshots", now=now or datetime.now(UTC), grace=grace):
        repo.load_index()
        snapshots = list(repo.snapshots())
        for key in sorted(repo.unreadable_snapshots):
            move_aside(repo, key, report)
        if rewrite:
            _rewrite_damaged(repo, snapshots, report)
    return report


def _rewrite_damaged(repo: Repository, snapshots: list[Snapshot], report: RepairReport) -> None:
    """Write each restore point that needs a missing blob again, without what cannot be read."""
    writer = BlobWriter(repo, hostname="repair")
    rewritten: list[tuple[str, Snapshot, bytes]] = []
    try:
        memo: dict[bytes, tuple[bytes | None, list[str]]] = {}
        for snap in snapshots:
            tree_id, dropped = _rewrite_tree(repo, writer, bytes.fromhex(snap.tree), "/", memo)
            if not dropped:
                continue
            new = Snapshot(
                id=new_snapshot_id(),
                time=snap.time,
                hostname=snap.hostname,
                tags=sorted({*snap.tags, REPAIRED_TAG}),
                paths=snap.paths,
                kind=snap.kind,
                tree=(tree_id or writer.save(TREE, memoryview(encode_tree([])))[0]).hex(),
                retain_until=snap.retain_until,
                stats={**snap.stats, "repaired_from": snap.id, "dropped_paths": dropped[:1000]},
            )
            new.id, sealed = repo.keyring.seal_manifest(new)  # its id is its content's
            rewritten.append((repo.snapshot_key(snap.id), new, sealed))
            report.dropped_paths[snap.id] = dropped
            report.rewritten[snap.id] = new.id
        writer.flush()
    except BaseException:
        writer.abort()
        raise

    def write_manifests() -> None:
        for old_key, new, sealed in rewritten:  # in the original's namespace, beside it
            where = old_key[: old_key.rindex(SNAPSHOT_PREFIX)] + SNAPSHOT_PREFIX + new.id
            repo.store.put(where, sealed, if_absent=True, retain_until=new.retain_until)

    writer.commit(write_manifests)
    for old_key, _, _ in rewritten:
        move_aside(repo, old_key, report)


@dataclass
class _Rewrite:
    """One folder being rewritten: what is kept and dropped so far, and a folder awaiting its subtree."""

    tree_id: bytes
    where: str
    nodes: Iterator[Node]
    kept: list[Node] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    waiting: Node | None = None


def _rewrite_tree(
    repo: Repository,
    writer: BlobWriter,
    root: bytes,
    where: str,
    memo: dict[bytes, tuple[bytes | None, list[str]]],
) -> tuple[bytes | None, list[str]]:
    """The tree without unreadable parts (``None`` if the tree itself is gone) and the paths dropped.

    Post-order with an explicit stack: a damaged restore point may be deeper than the recursion limit.
    """

    def opened(tree_id: bytes, at: str) -> _Rewrite | None:
        if tree_id in memo:
            return None
        try:
            nodes = repo.load_tree(tree_id)
        except CloudkeepError:
            memo[tree_id] = (None, [at])
            return None
        return _Rewrite(tree_id, at, iter(nodes))

    first = opened(root, where)
    stack = [first] if first is not None else []
    while stack:
        frame = stack[-1]
        if frame.waiting is not None:  # a folder whose subtree has just been settled
            folder, frame.waiting = frame.waiting, None
            assert folder.subtree is not None
            subtree, below = memo[folder.subtree]
            frame.dropped.extend(below)
            if subtree is not None:
                frame.kept.append(dataclasses.replace(folder, subtree=subtree) if below else folder)
            continue
        node = next(frame.nodes, None)
        if node is None:
            stack.pop()
            rewritten = frame.tree_id
            if frame.dropped:
                rewritten = writer.save(TREE, memoryview(encode_tree(frame.kept)))[0]
            memo[frame.tree_id] = (rewritten, frame.dropped)
            continue
        path = f"{frame.where.rstrip('/')}/{node.name}"
        if any(b not in repo.index and b not in repo.doomed for b in node.content):
            frame.dropped.append(path)
        elif node.type == DIR and node.subtree is not None:
            frame.waiting = node
            child = opened(node.subtree, path)
            if child is not None:
                stack.append(child)
        else:
            frame.kept.append(node)
    return memo[root]
