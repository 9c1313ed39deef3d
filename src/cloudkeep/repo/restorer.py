"""Restore: a snapshot, a subtree or single files back to a folder, with their metadata.

Restore is planned per pack, not per file: every needed blob is mapped to (file, offset) targets,
then each pack's needed blobs are read in a few coalesced ranges (``runreader``) and decrypted,
verified against their content ids and written with ``pwrite`` on a pool of decoder threads. Files
are pre-sized with ``ftruncate`` so all-zero blocks of sparse files are simply not written.
Metadata is applied last (directories deepest first) so writing does not disturb mtimes. The
plan reaches the readers in batches while it is still being made: data flows from the first
hundred files on instead of after the last folder of the restore point was listed. From a remote
store, where a request costs, the plan goes out in one batch, but for each pack the plan needs
(nearly) all of and has moved past: it goes at once, whole.

Names come from the repository and are hostile: every entry is made relative to its folder's
descriptor and nothing is followed (``targetfs``); what cannot be restored safely becomes an
error of the restore, named in ``RestoreResult.errors``, and the rest is still restored.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import queue
import stat
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cloudkeep.compat import SLOTS
from cloudkeep.errors import (
    CloudkeepError,
    ConfigurationError,
    IntegrityError,
)
from cloudkeep.heap import limit_heap_fragmentation
from cloudkeep.repo.archiver import BackupProgress
from cloudkeep.repo.browse import lookup
from cloudkeep.repo.chunker import MIN_SIZE
from cloudkeep.repo.confidential import PACK_PRELUDE_SIZE
from cloudkeep.repo.cpus import usable_cpus
from cloudkeep.repo.descriptors import raise_open_files
from cloudkeep.repo.fsmeta import FileMeta
from cloudkeep.repo.index import Location
from cloudkeep.repo.memory import collector_paused
from cloudkeep.repo.repository import Repository
from cloudkeep.repo.restorefiles import RestoredFile, RestoreResult, Target, TargetWriter
from cloudkeep.repo.restoreproc import RestoreProc
from cloudkeep.repo.runreader import (
    Request,
    RunReader,
    Segment,
    plan_requests,
)
from cloudkeep.repo.targetfs import (
    Refused,
    TargetDirs,
    data_runs,
    make_device,
    make_dir,
    make_fifo,
    make_symlink,
    name_problem,
    os_error,
    shown,
)
from cloudkeep.repo.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK, Node

__all__ = ["RestoreResult", "restore"]

log = logging.getLogger(__name__)

_CPUS = usable_cpus()  # what this process may use (cpus.py), read once

# Decoders (and creators): one per two cores, at most 4. Each small file is a few short system
# calls with the GIL handed over around each, and two decoders writing one large file spin on its
# inode lock: on 2 cores one decoder restored usr in 4.48 s with 4.5 s of CPU where two took 5.09 s
# and 6.5 s, and the synthetic tree 3.12 s against 3.28 s, S3 equal with less CPU (bench/README.md,
# "Full restore: one decoder on two cores"). More cores are not measured: large blobs decode with
# the GIL released, so they can use a second decoder where it does not take the planner's core.
LOCAL_THREADS = max(1, min(_CPUS // 2, 4))
# One more decoder takes only chunks of large files (a mean of at least the minimum chunk per
# blob), where decoding releases the GIL: on 2 cores usr restored in 3.06 s against 3.42 s and the
# synthetic tree in 1.33 s against 1.74 s, where a second decoder of every kind was slower on usr
# (bench/README.md, "Full restore: a second decoder for large files only"). From S3 (moto) too:
# usr 2.94 -> 2.70 s, the synthetic tree 3.21 -> 2.55 s (stop 31, "Full restore from S3").
BULK_DECODERS, BULK_BLOB = 1, MIN_SIZE
# A worker process takes general work too (``restoreproc``: small files' system calls and the
# Python around each, on a core and GIL of its own) once the plan holds this many files, where its
# start (~0.2 s of CPU, on the other core) is small beside the restore. On 2 cores usr restored in
# 2.90 s against 3.57 s (in process), from S3 (moto) in 3.55 s against 4.12 s, for 0.5-1 s more
# CPU; restic / cloudkeep on the venv tree 1.16 -> 1.60 (bench/README.md, "Full restore: a worker
# process"). One: more cores are not measured.
RESTORE_PROCS = 1 if _CPUS >= 2 else 0
PROC_FILES = 512
# While planning goes on, this process's general decoders leave small files to the worker process
# and take large files' chunks only: planning holds the GIL, the restore's longest step locally,
# and the decoders' hand-offs around each small file's system calls slowed it. Restored in turns:
# locally venv 1.945 -> 1.86 s and 1.815 -> 1.705 s (medians), usr the same (1.905 -> 1.885); from
# S3 (moto, day-2) venv 2.07 -> 2.015 s, usr 2.08 -> 1.965, the mail store 4.55 -> 4.25 (bench/README.md,
# stop 57; in stop 56, before the planner's look-ups were made cheaper, no faster from S3).
LEAVE_GENERAL = True
REMOTE_STREAMS = 4  # ranged GETs in flight on a remote store (latency), each streaming one pack range
# The plan goes to the readers in batches: the first small, so data flows early, the next ones
# growing (x2 up to x16) so that a pack's blobs are seldom split over many requests. Remote: one
# batch (None), requests largest first: in batches, the large files a walk reaches last (/var)
# were fetched last, alone. Restoring the day-2 tree from S3 (moto), batches 4 times the local
# ones held 110 MiB instead of 141 for 55,000 small files but took 3.61 s against 3.18, and usr
# 2.76 s against 2.62 (bench/README.md, stop 42).
BATCH_FILES, BATCH_BYTES = 256, 4 * 2**20
BATCH_GROWTH, BATCH_GROWTH_CAP = 2, 16
REMOTE_BATCH_SCALE: int | None = None
# Remote: a pack goes to the readers before planning ends once the plan needs most of it
# (``DENSE``, of the bytes up to its last blob: a day-2 restore point no longer needs every blob
# of an older pack) and has planned ``IDLE_BYTES`` of other packs' blobs since it last needed one
# of it: one request for all of it, as in the one batch, while planning goes on. (A pack the plan
# needs part of, or that it comes back to, waits for the end: in parts, each read what lay between
# its blobs, again; in batches 4 times the local ones, usr read 246 MiB in 38 requests where one
# batch reads 182 MiB in 16.) The mail store's folders each filled a pack or two: its day-2 restore
# from S3 (moto), in turns, ten rounds: 3.50-4.00 s -> 3.30-3.96 s (medians 3.60 -> 3.49); usr's the
# same (1.86-1.93 s, 4 more requests: bench/README.md, stop 55).
DENSE, IDLE_BYTES = 0.9, 4 * 2**20
LOOK_BYTES = 2**20  # planned bytes between two looks for such packs
# Planning waits once this many blob targets (about one per small file) are handed out and not yet
# written. Planning is far faster than writing: unbounded, a restore of 55,000 small files held every
# file's node and plan at once (RSS 111 MiB against restic's 108, 70 MiB bounded, with the trees no
# longer kept: bench/README.md, stop 42). A written batch's plan is dropped, so the plan in memory
# is this much plus the batch being made. (A remote store's one batch never waits.)
PLAN_AHEAD = 8192
PLAN_WAIT_S = 0.05  # how often a planner that waits for room looks whether the readers failed
POOL_GROUP = 32  # entries created per pool task


class _Restorer(TargetWriter):
    """Plans a restore point's entries (one thread) and moves their data (``runreader``'s threads).

    The plan is handed to the readers in batches as it grows, so data flows while planning goes
    on: each batch maps its own blobs to their targets (a blob needed again by a later batch is
    read again, which saves keeping every blob until the plan ends).
    """

    def __init__(
        self,
        repo: Repository,
        dirs: TargetDirs,
        progress: Callable[[BackupProgress], None] | None,
        pool: ThreadPoolExecutor,
    ) -> None:
        super().__init__(dirs)
        self.repo, self.progress, self.pool = repo, progress, pool
        self.remote = repo.store.remote
        self.by_blob: dict[bytes, list[Target]] = defaultdict(list)  # the batch being planned
        self.batches: list[dict[bytes, list[Target]]] = []  # handed out: ``Request.batch`` indexes them
        self.batch_files = self.batch_bytes = self.batch_targets = 0
        # Per handed-out batch, its targets not yet written; in all, across batches (under ``room``).
        self.unwritten: list[int] = []
        self.unwritten_total = 0
        self.room = threading.Condition(threading.Lock())
        self.batch_scale: int | None = REMOTE_BATCH_SCALE if self.remote else 1
        self.located: dict[bytes, Location] = {}  # where the batch's blobs are (each looked up once)
        # Remote: per pack, what the batch needs of it (``_hand_out_dense``), and the packs needed
        # since they were last looked at; the stored bytes of the blobs looked up so far (the
        # plan's clock) and when to look for dense packs next
        self.parts: dict[str, _Part] | None = {} if self.remote else None
        self.active: set[str] = set()
        self.clock = self.next_look = 0
        # metadata to apply at the end: (folder index, name, node, file when it is one)
        self.finishing: list[tuple[int, str, Node, RestoredFile | None]] = []
        self.links: list[tuple[RestoredFile, int, str, str]] = []  # (first occurrence, folder, name, path)
        self.created: list[Future[None]] = []  # the batch's precreations, done before its data is read
        self.made: list[Future[None]] = []  # special entries, waited for at the end
        # Pool tasks go in groups: a task costs the pool's locks and a GIL hand-off or two
        self.to_create: list[RestoredFile] = []
        self.to_make: list[tuple[int, str, Node, str]] = []
        self.first_link: dict[tuple[int, int], RestoredFile] = {}
        self.planned: queue.SimpleQueue[tuple[list[Future[None]], list[Request]] | None] = queue.SimpleQueue()
        self.reader = RunReader(
            repo.store,
            self._restore_segment,
            readers=REMOTE_STREAMS if self.remote else 0,
            decoders=LOCAL_THREADS + BULK_DECODERS,
            bulk=_bulk,
            general=LOCAL_THREADS,
            delegates=RESTORE_PROCS,
        )
        self.proc: RestoreProc | None = None  # the worker process, once the plan is large enough
        self.proc_tried = False

    # -- planning (one thread): folders, links, fifos and devices are made now --------------

    def plan_tree(self, tree_id: bytes, index: int, path: str) -> None:
        """Everything below one folder, depth first without recursion (depth is the repository's)."""
        stack = [(tree_id, index, path)]
        while stack:
            tree_id, index, path = stack.pop()
            try:  # each folder is planned once: its nodes are not kept (the top one is read whole)
                nodes = self._listing(tree_id, path)
            except IntegrityError as exc:
                if not path:
                    raise  # not even the top listing: nothing to restore
                self.refuse(path, f"cannot read its listing ({exc.message})")
                continue
            names = _Names(functools.partial(self._listing, tree_id, path))
            last = ""  # the last name planned
            for at in itertools.count():
                try:
                    node = next(nodes, None)
                    problem = None if node is None else name_problem(node.name)
                    if node is not None and problem is None and names.again(node.name, at):
                        problem = "a second entry of the same name in its folder"
                except IntegrityError as exc:  # what came before it is planned, and restored
                    after = f" past {shown(last)}" if last else ""
                    self.refuse(path, f"cannot read its listing{after} ({exc.message})")
                    break
                if node is None:
                    break
                entry_path = f"{path}/{shown(node.name)}"
                if problem is not None:
                    self.refuse(entry_path, f"refused: {problem}")
                    continue
                last = node.name
                sub = self.plan(node, index, node.name, entry_path)
                self.start_proc()
                if sub is not None:
                    stack.append(sub)
                elif self.batch_full():
                    self.hand_out()
                    self.wait_for_room()

    def _listing(self, tree_id: bytes, path: str) -> Iterator[Node]:
        """A folder's nodes as they are parsed (the top folder's read whole: it is looked up)."""
        return self.repo.tree_nodes(tree_id) if path else iter(self.repo.load_tree(tree_id, keep=False))

    def plan(self, node: Node, index: int, name: str, path: str) -> tuple[bytes, int, str] | None:
        """Plan one entry named ``name`` in folder ``index``; a folder returns its listing to plan."""
        try:
            if node.type == FILE:
                self._plan_file(node, index, name, path)
                return None
            if node.type == DIR:
                if not isinstance(node.subtree, bytes):
                    raise Refused("a folder without a listing")
                with self.dirs.at(index) as fd:
                    new = make_dir(fd, name)
                child = self.add_dir(index, name, new)
                self.result.dirs += 1
                self.finishing.append((index, name, node, None))
                return node.subtree, child, path
            if node.type not in (SYMLINK, FIFO, CHARDEV, BLOCKDEV):
                raise Refused(f"unknown entry type {shown(node.type)}")
            # Made on the I/O pool with the files: creating entries is kernel-bound and the
            # names of one folder are unique (checked above), so the order does not matter.
            self.to_make.append((index, name, node, path))
            if len(self.to_make) >= POOL_GROUP:
                self.made.append(self.pool.submit(self._make_specials, self.to_make))
                self.to_make = []
        except (Refused, OSError, ValueError, TypeError, OverflowError) as exc:
            self.failed(path, exc)
        except IntegrityError as exc:  # a chunk the index does not know
            self.refuse(path, exc.message)
        return None

    def _make_specials(self, items: list[tuple[int, str, Node, str]]) -> None:
        for item in items:
            self._make_special(item)

    def _precreate_all(self, files: list[RestoredFile]) -> None:
        for file in files:
            self.precreate(file)

    def _make_special(self, item: tuple[int, str, Node, str]) -> None:
        """Create one symbolic link, FIFO or device node (on the I/O pool); metadata at the end."""
        index, name, node, path = item
        try:
            with self.dirs.at(index) as fd:
                if node.type == SYMLINK:
                    make_symlink(fd, name, node.target)
                elif node.type == FIFO:
                    make_fifo(fd, name)
                else:
                    kind = stat.S_IFCHR if node.type == CHARDEV else stat.S_IFBLK
                    try:
                        make_device(fd, name, (node.mode & 0o7777) | kind, node.rdev)
                    except PermissionError:
                        with self.lock:
                            self.result.warnings.append(f"{path}: device nodes need root, skipped")
                        return
            with self.lock:
                self.finishing.append((index, name, node, None))
        except (Refused, OSError, ValueError, TypeError, OverflowError) as exc:
            self.failed(path, exc)

    def _plan_file(self, node: Node, index: int, name: str, path: str) -> None:
        if node.links > 1:
            key = (node.device, node.inode)
            first = self.first_link.get(key)
            if first is not None:
                self.links.append((first, index, name, path))
                return
        offsets, offset, located, parts = [], 0, self.located, self.parts
        for blob_id in node.content:  # an unknown chunk refuses the file before anything is made
            offsets.append(offset)
            loc = located.get(blob_id)
            if loc is None:
                loc = located[blob_id] = self.repo.locate(blob_id)
                if parts is not None:
                    self._count(parts, loc, blob_id)
            offset += loc.entry.raw_length
        if not isinstance(node.size, int) or node.size < 0:
            raise Refused("malformed size")
        file = RestoredFile(index, name, "", node.size, bool(node.sparse), len(node.content) == 1)
        if node.links > 1:
            self.first_link[(node.device, node.inode)] = file
            file.linked = True
        if file.single:  # written once: its metadata goes on right after, through the same descriptor
            file.meta, file.mode = FileMeta.of(node), self.created_as(node, index)
        else:  # created and pre-sized in parallel before the data arrives; metadata at the end
            self.to_create.append(file)
            if len(self.to_create) >= POOL_GROUP:
                self.created.append(self.pool.submit(self._precreate_all, self.to_create))
                self.to_create = []
            self.finishing.append((index, name, node, file))
        by_blob = self.by_blob
        for i, blob_id in enumerate(node.content):  # ``offsets`` has one offset per chunk
            by_blob[blob_id].append(Target(file, offsets[i]))
        self.result.files += 1
        self.result.bytes += node.size
        self.batch_files += 1
        self.batch_bytes += node.size
        self.batch_targets += len(offsets)
        if parts and self.clock >= self.next_look:
            self._hand_out_dense(parts)

    def _count(self, parts: dict[str, _Part], loc: Location, blob_id: bytes) -> None:
        """Remote: one more blob of its pack that the batch needs (looked up for the first time)."""
        part = parts.get(loc.pack_id)
        if part is None:
            part = parts[loc.pack_id] = _Part(self.repo.pack_extent(loc.pack_id))
        part.blobs.append(blob_id)
        part.planned += loc.entry.length
        part.touched = self.clock = self.clock + loc.entry.length
        self.active.add(loc.pack_id)

    def _hand_out_dense(self, parts: dict[str, _Part]) -> None:
        """Remote: hand out each pack the plan needs most of and has left (``DENSE``). A pack left
        and not dense is not looked at again until the plan needs it again: a look costs the
        packs needed lately, not every pack of a large restore."""
        clock = self.next_look = self.clock
        self.next_look += LOOK_BYTES
        left = [pack_id for pack_id in self.active if clock - parts[pack_id].touched >= IDLE_BYTES]
        self.active.difference_update(left)
        for pack_id in left:
            part = parts[pack_id]
            if part.planned >= DENSE * part.extent:
                del parts[pack_id]
                self._hand_out_pack(pack_id, part.blobs)

    def _hand_out_pack(self, pack_id: str, blobs: list[bytes]) -> None:
        """Give one pack's needed blobs to the readers as a batch of their own. A blob needed again
        later is looked up again, and read again in the last batch."""
        part: dict[bytes, list[Target]] = {}
        locations = []
        for blob_id in blobs:
            location = self.located.pop(blob_id)
            targets = self.by_blob.pop(blob_id, None)  # none: its file was refused after the look-up
            if targets:
                part[blob_id] = targets
                locations.append(location)
        if not part:
            return
        self._submit_creations()
        self.start_proc()
        count = sum(len(targets) for targets in part.values())
        self._queue(part, count, plan_requests(locations, remote=True, batch=len(self.batches)))
        self.batch_targets -= count

    # -- data ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the readers; they take the plan's batches as ``hand_out`` gives them."""
        self.reader.start(self._batches())

    def batch_full(self) -> bool:
        if self.batch_scale is None:
            return False
        grown = min(BATCH_GROWTH ** len(self.batches), BATCH_GROWTH_CAP) * self.batch_scale
        return self.batch_files >= BATCH_FILES * grown or self.batch_bytes >= BATCH_BYTES * grown

    def hand_out(self) -> None:
        """Give the batch planned so far to the readers (its blobs as coalesced requests)."""
        if self.reader.error is not None:
            raise self.reader.error  # a damaged pack or a full target: planning on is pointless
        self._submit_creations()
        if self.to_make:
            self.made.append(self.pool.submit(self._make_specials, self.to_make))
            self.to_make = []
        if not self.by_blob and not self.created:
            return
        self.start_proc()  # (a restore of named paths plans none of its files in ``plan_tree``)
        located = self.located
        requests = plan_requests(
            (located[b] for b in self.by_blob), remote=self.remote, batch=len(self.batches)
        )
        self._queue(self.by_blob, self.batch_targets, requests)
        self.by_blob = defaultdict(list)
        self.located = {}  # a blob a later batch needs again is looked up again
        if self.parts is not None:
            self.parts.clear()
            self.active.clear()
        self.batch_files = self.batch_bytes = self.batch_targets = 0

    def _submit_creations(self) -> None:
        """Files of several chunks planned so far are created (on the pool) before their data."""
        if self.to_create:
            self.created.append(self.pool.submit(self._precreate_all, self.to_create))
            self.to_create = []

    def _queue(self, batch: dict[bytes, list[Target]], targets: int, requests: list[Request]) -> None:
        """Hand a batch of ``targets`` to the readers: its requests, after the creations so far
        (the readers take batches in order: an earlier batch waited for the ones before)."""
        with self.room:
            self.batches.append(batch)
            self.unwritten.append(targets)
            self.unwritten_total += targets
        self.planned.put((self.created, requests))
        self.created = []

    def start_proc(self) -> None:
        """Start the worker process as the plan of a folder's entries reaches ``PROC_FILES`` files,
        not at its next hand-out: its interpreter boots (~0.2 s) while planning goes on, and a
        remote store's one batch is handed out only when planning ends. (Outside ``plan``, whose
        errors are one entry's.) Tried once; nothing to do before that many files."""
        if self.proc_tried or self.result.files < PROC_FILES:
            return
        self.proc_tried = True
        if not RESTORE_PROCS:
            return
        try:
            proc = RestoreProc(self, self.repo, self.batches, self._written, self._settled, self.reader.fail)
        except (OSError, CloudkeepError) as exc:  # cannot start here: the threads do it all
            log.warning("restore goes on without a worker process: %s", exc)
        else:
            self.proc = proc
            self.reader.add_taker(proc.handle)
            self._leave_general(True)

    def _leave_general(self, left: bool) -> None:
        """While planning: small files go to the worker process alone, this process's decoders
        take the large files' chunks (``LEAVE_GENERAL``)."""
        if LEAVE_GENERAL and self.proc is not None:
            self.reader.leave_general(left)

    def wait_for_room(self) -> None:
        """Wait while ``PLAN_AHEAD`` targets are handed out and not yet written, or until a reader
        fails (``hand_out`` then raises it); meanwhile this process's decoders take any work."""
        with self.room:
            if self.unwritten_total <= PLAN_AHEAD or self.reader.error is not None:
                return
        self._leave_general(False)
        try:
            with self.room:
                while self.unwritten_total > PLAN_AHEAD and self.reader.error is None:
                    self.room.wait(PLAN_WAIT_S)
        finally:
            self._leave_general(True)

    def _settled(self, batch: int, targets: int) -> None:
        """One segment's ``targets`` of ``batch`` were written (or their file had failed). A batch
        all written lets its plan go (no segment of it is handled again); planning may go on."""
        with self.room:
            left = self.unwritten[batch] - targets
            self.unwritten[batch] = left
            self.unwritten_total -= targets
            if left == 0:
                self.batches[batch] = {}
            self.room.notify()

    def _batches(self) -> Iterator[Request]:
        """The readers' requests, batch after batch (blocks while planning goes on)."""
        while (batch := self.planned.get()) is not None:
            created, requests = batch
            for future in created:
                future.result()  # files of several chunks exist before their data; ENOSPC raises here
            yield from requests

    def fetch_rest(self) -> None:
        """Hand out the last batch and wait for every read, write and special entry."""
        self.hand_out()  # (may start the worker: a restore of named files plans none in ``plan_tree``)
        self._leave_general(False)  # planning is over: every decoder takes every kind of work
        self.planned.put(None)
        self.reader.join()
        if self.proc is not None:
            self.proc.finish()
        for future in self.made:
            future.result()

    def abandon(self) -> None:
        """Planning or the last hand-out failed: stop the readers and the worker (with no end of
        the plan the sorting thread would wait for it forever, and the process with it)."""
        self.planned.put(None)
        with contextlib.suppress(Exception):  # the planning error is raised instead
            self.reader.join()
        self.kill_proc()

    def kill_proc(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def _restore_segment(self, request: Request, segment: Segment, view: memoryview) -> None:
        """Decode, verify and write one segment's blobs (on a decoder thread of the run reader)."""
        repo, by_blob, base, written, settled = self.repo, self.batches[request.batch], segment.start, 0, 0
        pack_id = request.pack_id
        # The pack's key once per segment; a segment from the pack's start carries its prelude.
        crypter = repo.pack_crypter(pack_id, bytes(view[:PACK_PRELUDE_SIZE]) if base == 0 else None)
        for entry in segment.entries:
            at = entry.offset - base
            sealed = view[at : at + entry.length]
            data = repo.decode_blob(entry, pack_id, sealed, reuse_buffer=True, crypter=crypter)
            targets = by_blob[entry.id]
            for target in targets:
                if target.file.failed:
                    continue
                runs = data_runs(data, target.offset) if target.file.sparse else [(0, len(data))]
                self.write(target, data, runs)
            written += len(data) * len(targets)
            settled += len(targets)
        self._settled(request.batch, settled)
        self._written(written)

    def _written(self, count: int) -> None:
        with self.lock:
            self.bytes_written += count
        if self.progress:
            self.progress(
                BackupProgress(self.result.files, self.bytes_written, self.result.bytes, 0, 0, None)
            )

    # -- links and metadata ----------------------------------------------------------------

    def finish(self) -> None:
        for link in self.links:
            self.link(link)
        # Leaves, then folders deepest first, so that setting a folder's mtime is not undone by
        # touching its children. On this thread: each entry is two to six short system calls, and
        # the eight threads that shared them handed the GIL over around every one (usr's 2,994
        # links and files of several chunks: 75-87 ms on them, 15 ms here; bench/README.md, stop 56).
        depths = self.dirs.depths
        dirs = sorted((i for i in self.finishing if i[2].type == DIR), key=lambda i: -depths[i[0]])
        for item in self.finishing:
            if item[2].type != DIR:
                self.apply(item)
        for item in dirs:
            self.apply(item)
        self.result.verified = self.result.files - self.failed_files  # decode_blob verified every blob

    def drop_plan(self) -> None:
        """Free the plan while the collector is still paused.

        The restorer is in a cycle (its reader calls back into it), so the plan would outlive the
        restore until a full collection; worse, every object made while paused counts as young, and
        the first collection after the pause walks all of them (and the next generation again).
        """
        self.batches.clear()
        self.located.clear()
        self.finishing.clear()
        self.links.clear()
        self.first_link.clear()
        self.by_blob.clear()


@dataclass(**SLOTS)
class _Part:
    """Remote: what a batch needs of one pack so far (``_Restorer._hand_out_dense``)."""

    extent: int  # where the pack's last blob ends
    blobs: list[bytes] = field(default_factory=list)
    planned: int = 0  # their stored bytes
    touched: int = 0  # the plan's clock when one was last added


class _Names:
    """A folder's names so far, to refuse a second entry of one. Nodes come in name order
    (``encode_tree``), so a name past the greatest so far is none of them: no name is kept until
    one comes out of order (another writer's tree), when the names before it are read again. Kept,
    the names of a folder of 200,000 files were 25 MiB at the end of its plan."""

    def __init__(self, listing: Callable[[], Iterator[Node]]) -> None:
        self._listing = listing  # the folder's nodes, read again
        self._greatest = ""
        self._seen: set[str] | None = None

    def again(self, name: str, at: int) -> bool:
        """Whether ``name`` (one ``name_problem`` passes), of the listing's node ``at``, is the name
        of a node before it. (A name refused is no node's second: it is refused anyway.)"""
        if self._seen is None:
            if name > self._greatest:
                self._greatest = name
                return False
            self._seen = {
                node.name for node in itertools.islice(self._listing(), at) if name_problem(node.name) is None
            }
        if name in self._seen:
            return True
        self._seen.add(name)
        return False


def _bulk(request: Request) -> bool:
    """Whether a request holds chunks of large files: blobs of ``BULK_BLOB`` on average (from the
    segments' sums: a pass over every blob here cost an S3 restore of usr 0.1-0.2 s of GIL)."""
    segments = request.segments
    return sum(s.raw for s in segments) >= BULK_BLOB * sum(len(s.entries) for s in segments)


def _requested(paths: list[str] | None) -> list[tuple[str, ...]]:
    """Requested paths as name tuples, ``..`` refused, nested requests folded into their parent."""
    wanted: list[tuple[str, ...]] = []
    for path in paths or ["/"]:
        parts = tuple(p for p in path.split("/") if p not in ("", "."))
        if ".." in parts or "\0" in path:
            raise ConfigurationError(f"restore path {path!r} may not contain '..' or NUL")
        wanted.append(parts)
    wanted.sort()
    kept: list[tuple[str, ...]] = []
    for parts in wanted:
        if not any(parts[: len(k)] == k for k in kept):
            kept.append(parts)
    return kept


def restore(
    repo: Repository,
    snapshot_id: str,
    target: Path,
    *,
    paths: list[str] | None = None,
    progress: Callable[[BackupProgress], None] | None = None,
) -> RestoreResult:
    """Restore all of a snapshot (or only ``paths`` inside it) below ``target``, keeping absolute paths.

    Nothing is created or changed outside ``target`` whatever the restore point holds; entries
    that cannot be restored safely are listed in ``RestoreResult.errors`` (``ok`` is then False).
    """
    limit_heap_fragmentation()
    raise_open_files()  # as a backup does: at a soft limit of 256, packs failed to open (EMFILE)
    requested = _requested(paths)
    nodes = [(parts, lookup(repo, snapshot_id, "/" + "/".join(parts))) for parts in requested]
    target = Path(target)
    try:
        target.mkdir(parents=True, exist_ok=True)  # the administrator's folder: links in it are theirs
        root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise os_error(exc, str(target)) from exc
    dirs = TargetDirs(root_fd)
    pool: ThreadPoolExecutor | None = None
    restorer: _Restorer | None = None
    try:
        pool = ThreadPoolExecutor(max_workers=LOCAL_THREADS, thread_name_prefix="ck-restore")
        restorer = _Restorer(repo, dirs, progress, pool)
        with collector_paused():  # the plan is long-lived and acyclic: nothing for it to find
            restorer.start()
            try:
                _plan(restorer, nodes)
                repo.drop_tree_caches()  # every tree is read
                restorer.fetch_rest()
            except BaseException:  # the last hand-out raises a reader's failure too: threads wait
                restorer.abandon()
                raise
            pool.shutdown()
            restorer.finish()
            restorer.drop_plan()
    finally:
        if restorer is not None:
            restorer.kill_proc()  # a failed restore's worker (a finished one has ended already)
        if pool is not None:
            pool.shutdown()  # before the folders' descriptors close: its threads use them
        dirs.close()
    return restorer.result


def _plan(restorer: _Restorer, nodes: list[tuple[tuple[str, ...], Node]]) -> None:
    """Plan every requested entry (the whole restore point for ``/``)."""
    folders: dict[tuple[str, ...], int] = {(): 0}
    for parts, node in nodes:
        if not parts:  # the synthetic root has no metadata of its own: restore what is inside
            assert node.subtree is not None
            restorer.plan_tree(node.subtree, 0, "")
            continue
        index = _folder(restorer, folders, parts[:-1])
        if index is None:
            continue
        sub = restorer.plan(node, index, parts[-1], "/" + "/".join(parts))
        if sub is not None:
            restorer.plan_tree(*sub)


def _folder(restorer: _Restorer, folders: dict[tuple[str, ...], int], parts: tuple[str, ...]) -> int | None:
    """The folder index of a requested path's parent, made (plainly, no metadata) as needed."""
    for depth in range(1, len(parts) + 1):
        key = parts[:depth]
        if key in folders:
            continue
        parent = folders[key[:-1]]
        try:
            with restorer.dirs.at(parent) as fd:
                new = make_dir(fd, key[-1])
        except (Refused, OSError) as exc:
            restorer.failed("/" + "/".join(key), exc)
            return None
        folders[key] = restorer.add_dir(parent, key[-1], new)
    return folders[parts]
