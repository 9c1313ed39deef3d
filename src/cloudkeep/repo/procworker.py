"""A backup's file-content worker process: read, chunk, hash, compress, encrypt and pack files.

A first backup is mostly per-file and per-blob work, and in one process the pool threads, the
walk and the tree building share one GIL: cloudkeep ran at about one core where restic uses two.
Each worker process (started by ``procpool.py``, one per pool thread) takes batches of files by
path and stat key, and for each file reads it, cuts it into chunks and hashes them; it asks its
parent which chunks are new (the parent's ``BlobWriter.reserve`` keeps dedup exact across
workers), encodes those into its own pack staging file, and hands each finished pack to the parent
to upload (``BlobWriter.adopt_pack``), which answers with the next pack's key. It also writes each
file's node as its tree will have it (``tree.FileText``), from the walk's stat key: the parent then
makes no node per file. Chunk ids, blob encoding, pack layout and tree text are the thread path's:
the repository cannot tell which one wrote a pack or a tree.

A job's last chunk group is asked about with its ``done`` (or ``subtree``) and answered by a
``tail`` message; the worker goes on with its next job and stores those chunks at the next job's
start (or at ``finish``), once the answer is there. Asked before ``done``, it cost a second round
trip per batch, the worker idle while the parent's GIL came round to it (most batches of small
files are a single group); a mail store's first backup, medians of eight rounds, 5.96 -> 5.31 s
(bench/README.md, stop 40). The parent reserved those chunks when it got ``done``, and hands every
open pack to the writer (``finish``) before the restore point is committed, so files may name them
meanwhile. Jobs may be queued before the last one is answered (the lane, ``filecontent.py``): a
thread here reads the channel as messages come (``Inbox``), so the parent never waits to write.

Messages are length-prefixed pickles over the child's stdin/stdout, between a parent and the
child it started (nothing else can write to those pipes). The parent dying closes them: the
worker's next read or write fails and it exits, removing its open staging pack; a worker never
outlives the backup by more than one chunk group's work. Only light modules are imported here
(not the ``cloudkeep.repo`` package's whole API): ``procpool._BOOT`` loads this module alone.
Runs on the machines' Python (3.9+).
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cloudkeep.exiting import skip_exit_collection
from cloudkeep.heap import limit_heap_fragmentation
from cloudkeep.repo.channel import Channel
from cloudkeep.repo.chunker import ChunkerParams, StreamCutter, close_opened, open_ahead, read_small
from cloudkeep.repo.crypto import Crypter, MasterKey
from cloudkeep.repo.fsmeta import FILE_FLAGS, Stat, node_from_stat, read_xattrs
from cloudkeep.repo.pack import DATA, PackWriter, blob_aad
from cloudkeep.repo.procsubtree import SubtreeWalk
from cloudkeep.repo.tree import FILE, node_json

# Chunks hashed before the parent is asked which are new (a batch's last group with its results:
# no question of its own for most small-file batches), at most this much held per large file.
# At least a batch of small files (``filecontent.PROC_BATCH_FILES``): else each asks mid-batch.
GROUP_CHUNKS = 1024
GROUP_BYTES = 2 * 2**20
# A large file's new chunks are sealed on this many threads (zstd and AES-GCM release the GIL):
# the walk hands out its last large file to one worker, which otherwise encoded it alone on one
# core while the other worker had nothing left (bench/README.md, "First backup in two workers").
ENCODE_THREADS = 2
# New bytes of a chunk group from which its chunks are sealed in parallel, when they are a large
# file's (half the minimum chunk on average): a group of small files' blobs cost more in hand-offs
# to the threads than it saved (a mail store's first backup, ~5 % of a worker's time).
PARALLEL_BYTES = 2**20


class Stopped(Exception):
    """The parent answered a question with ``stop`` (the backup failed or was cancelled)."""


_GONE = ("gone",)  # the inbox's word for a channel that closed


class Inbox:
    """The parent's messages, read as they come on a thread of its own: jobs queue (the parent
    may send several ahead), answers to this worker's questions and to its jobs' last groups are
    handed to whoever waits for them. The parent never blocks writing to a busy worker."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.jobs: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.replies: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.tails: deque[tuple[Any, ...]] = deque()  # answers to jobs' last groups, in order
        self.tail_came = threading.Condition()
        self.gone = False
        threading.Thread(target=self._read, name="ck-inbox", daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                message = self.channel.recv()
                kind = message[0]
                if kind in ("files", "subtree", "part", "finish", "quit"):
                    self.jobs.put(message)
                elif kind == "tail":
                    with self.tail_came:
                        self.tails.append(message[1])
                        self.tail_came.notify()
                else:  # an answer to the question being asked
                    self.replies.put(message)
        except (EOFError, OSError):
            pass
        with self.tail_came:
            self.gone = True
            self.tail_came.notify()
        self.jobs.put(_GONE)
        self.replies.put(_GONE)

    def reply(self) -> tuple[Any, ...]:
        message = self.replies.get()
        if message is _GONE:
            raise EOFError("the parent closed the worker channel")
        return message

    def job(self) -> tuple[Any, ...]:
        return self.jobs.get()

    def tail(self, wait: bool) -> tuple[Any, ...] | None:
        """The next answer about a job's last group; None if none came yet (without ``wait``)."""
        with self.tail_came:
            while wait and not self.tails and not self.gone:
                self.tail_came.wait()
            if self.tails:
                return self.tails.popleft()
        if wait:
            raise EOFError("the parent closed the worker channel")
        return None


class Worker:
    """The worker's state: its parent channel, the chunker, and the pack being filled."""

    def __init__(self, channel: Channel, init: dict[str, Any], inbox: Inbox) -> None:
        self.channel = channel
        self.inbox = inbox
        self.params = ChunkerParams.from_json(init["chunker"])
        self.cutter = StreamCutter(self.params)
        self.base = Crypter(MasterKey(init["key"], init["id_key"]), init["level"])
        self.crypter = self.base
        self.prelude: bytes = init["prelude"]
        self.pack_size: int = init["pack_size"]
        self.staging: str = init["staging"]
        self.tag: str = init["tag"]
        self.md5: bool = init["md5"]  # the pack's MD5 for its upload (``BlobWriter.pack_md5``)
        self.pack: PackWriter | None = None
        self.encoders: ThreadPoolExecutor | None = None  # started by the first large file
        # A large file's group on the encoder threads: its pack, (id, size) per blob, the results.
        self.sealing: tuple[PackWriter, list[tuple[bytes, int]], Iterator[bytes]] | None = None
        self.ids: list[bytes] = []  # the chunk group not yet asked about
        self.data: list[bytes] = []
        self.group_bytes = 0
        # Jobs' last groups, asked with their ``done``, not yet stored (answered by ``tail``s).
        self.tails: deque[tuple[list[bytes], list[bytes]]] = deque()
        self.asked: tuple[list[bytes], list[bytes]] | None = None  # a group asked about mid-job

    def files(self, items: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Store a batch of (path, stat key as the walk took it); answers ``done`` with each file's
        (its node's tree text or None, chunk ids, bytes read, (errno, why) when unreadable, no
        xattrs) in order, or None for files a ``stop`` left unread, and the ids of its last chunk
        group."""
        results: list[tuple[bytes | None, bytes, int, tuple[int, str] | None, bool] | None] = []
        small = len(items) > 1 and all(key[9] < self.params.min_size for _, key in items)
        opened = open_ahead([(path, None, key[9]) for path, key in items], FILE_FLAGS) if small else []
        try:
            self.answered()
            for i, (path, key) in enumerate(items):
                results.append(self.one_file(path, key, opened[i] if opened else None))
            self.settle()
        except Stopped:
            self.drop_group()
            results.extend([None] * (len(items) - len(results)))
        finally:
            close_opened(opened)
        self.channel.send(("done", results, self.last_group()))

    def subtree(self, path: str, key: tuple[Any, ...], options: dict[str, Any]) -> None:
        """Store the folder at ``path`` and all below it (``procsubtree.py``); answers ``subtree``
        with its tree id (None when a ``stop`` ended it), its counts and the ids of its last chunk
        group, as ``done`` does."""
        self.walk_job("subtree", options, lambda walk: walk.run(path, key))

    def part(self, path: str, key: tuple[Any, ...], names: list[str], options: dict[str, Any]) -> None:
        """Store the entries ``names`` of the large folder at ``path`` (``SubtreeWalk.part``);
        answers ``part`` with what its tree and row need (None when a ``stop`` ended it), its
        counts and the ids of its last chunk group."""
        self.walk_job("part", options, lambda walk: walk.part(path, key, names))

    def walk_job(self, kind: str, options: dict[str, Any], job: Callable[[SubtreeWalk], Any]) -> None:
        """Run a folder job on a ``SubtreeWalk`` and answer ``kind`` with its result and counts."""
        walk = SubtreeWalk(self, options)
        result = None
        try:
            self.answered()
            result = job(walk)
            self.settle()
        except Stopped:
            self.drop_group()
            result = None
        if result is not None:
            walk.send_out()
        counts = (walk.files, walk.dirs, walk.bytes_total, walk.bytes_read)
        self.channel.send((kind, result, *counts, self.last_group()))

    def drop_group(self) -> None:
        """A ``stop``: the backup ends without a restore point, what was being stored is dropped."""
        self.ids, self.data, self.group_bytes, self.sealing, self.asked = [], [], 0, None, None

    def last_group(self) -> list[bytes]:
        """The ids of the job's last chunk group, kept to store once the parent answers (``tail``)."""
        if not self.ids:
            return []
        group = self.take_group()
        self.tails.append(group)
        return group[0]

    def answered(self, wait: bool = False) -> None:
        """Store the new chunks of earlier jobs' last groups the parent has answered about (all of
        them, waiting for the answers, with ``wait``)."""
        while self.tails:
            answer = self.inbox.tail(wait)
            if answer is None:
                return
            self.store_fresh(*self.tails.popleft(), answer)

    def one_file(
        self, path: str, key: tuple[Any, ...], opened: int | OSError | None = None
    ) -> tuple[bytes | None, bytes, int, tuple[int, str] | None, bool]:
        """Store one file and write its node (from the walk's stat key, as the parent's
        ``node_from_stat`` would); ``opened``: its descriptor (its batch closes it) or open error
        from ``open_ahead``, else it is opened and closed here."""
        try:
            if isinstance(opened, OSError):
                raise opened
            fd = os.open(path, FILE_FLAGS) if opened is None else opened
        except OSError as exc:
            return None, b"", 0, (exc.errno or 0, exc.strerror or str(exc)), False
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (key[3], key[2]):  # replaced since the walk (or a folder above)
                return None, b"", 0, (errno.ESTALE, "replaced while being backed up"), False
            xattrs = read_xattrs(fd)
            content, total = [], 0
            for chunk in self.chunks(fd, key[9]):
                content.append(self.add(chunk, path))
                total += len(chunk)
        except OSError as exc:
            return None, b"", 0, (exc.errno or 0, exc.strerror or str(exc)), False
        finally:
            if opened is None:
                os.close(fd)
        node = node_from_stat(key[0], path, Stat(key), FILE, xattrs=xattrs)
        node.content, node.size = content, total
        return node_json(node).encode(), b"".join(content), total, None, not xattrs

    def chunks(self, fd: int, size: int) -> Iterator[bytes]:
        if size < self.params.min_size:
            data = read_small(fd, size, self.params.min_size)
            if data is not None:
                if data:
                    yield data
                return
            os.lseek(fd, 0, os.SEEK_SET)  # grew past the minimum since its stat
        with open(fd, "rb", buffering=0, closefd=False) as fh:
            for view in self.cutter.cut(fh):
                yield bytes(view)  # the cutter reuses its buffer; the group keeps chunks a while

    def add(self, chunk: bytes, path: str) -> bytes:
        """Hash ``chunk`` into the current group (asking about the group when it is full)."""
        blob_id = self.base.content_id(chunk)
        self.ids.append(blob_id)
        self.data.append(chunk)
        self.group_bytes += len(chunk)
        if len(self.ids) >= GROUP_CHUNKS or self.group_bytes >= GROUP_BYTES:
            self.ask(path)
        return blob_id

    def ask(self, path: str | None = None) -> None:
        """Ask the parent which chunks of the group to store; they are stored once the answer is
        here, when the next group is asked about (or a pack handed over, or the worker finishes):
        meanwhile the next group is read and hashed. Waiting for each answer, the worker idled a
        sixth of its time while the parent's GIL came round to the thread that answers."""
        if not self.ids:
            return
        self.settle_asked()
        ids, data = self.take_group()
        self.channel.send(("ids", ids, path))
        self.asked = (ids, data)

    def settle_asked(self) -> None:
        """Store the new chunks of the group last asked about (waiting for the answer)."""
        asked, self.asked = self.asked, None
        if asked is not None:
            self.store_fresh(*asked, self.inbox.reply())

    def take_group(self) -> tuple[list[bytes], list[bytes]]:
        """The current chunk group's ids and chunks; the next group starts empty."""
        group = self.ids, self.data
        self.ids, self.data, self.group_bytes = [], [], 0
        return group

    def store_fresh(self, ids: list[bytes], data: list[bytes], answer: tuple[Any, ...] | None) -> None:
        """Store the chunks of a group that the parent's ``answer`` names new (``("new", flags)``, in
        the group's order); any other answer (``stop``, or none) ends the batch: ``Stopped``."""
        if answer is None or answer[0] != "new":
            raise Stopped
        fresh = [(blob_id, chunk) for blob_id, chunk, is_new in zip(ids, data, answer[1]) if is_new]
        size = sum(len(chunk) for _, chunk in fresh)
        if len(fresh) > 1 and size >= PARALLEL_BYTES and size >= len(fresh) * self.params.min_size // 2:
            self.store_group(fresh)
            return
        for blob_id, chunk in fresh:
            self.store(blob_id, chunk)

    def open_pack(self) -> PackWriter:
        if self.pack is None:
            self.pack = PackWriter(
                DATA, self.staging, crypter=self.crypter, prelude=self.prelude, tag=self.tag, md5=self.md5
            )
        return self.pack

    def store(self, blob_id: bytes, chunk: bytes) -> None:
        self.settle()
        pack = self.open_pack()
        pack.add(blob_id, self.crypter.encode_into_buffer(chunk, blob_aad(DATA, blob_id)), len(chunk))
        if pack.size >= self.pack_size:
            self.hand_over()

    def store_group(self, fresh: list[tuple[bytes, bytes]]) -> None:
        """Start sealing a large file's new chunks on the encoder threads, all for the open pack;
        they join it when ``settle``d, so the file's next group is read and hashed meanwhile (a
        group read, then sealed, left the worker's second core idle between groups; a first
        backup of the usr tree took 2-3 % less wall this way, bench/README.md, stop 36).

        Every blob of a pack is sealed with that pack's key, so the whole group goes into the
        pack open now, which is handed over only after it (at most a group past the pack size,
        as the thread path's packs end at most a blob past it)."""
        self.settle()
        pack, crypter = self.open_pack(), self.crypter
        if self.encoders is None:
            self.encoders = ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="ck-encode")

        def seal(item: tuple[bytes, bytes]) -> bytes:
            blob_id, chunk = item  # a copy: the thread's buffer is reused by its next chunk
            return bytes(crypter.encode_into_buffer(chunk, blob_aad(DATA, blob_id)))

        blobs = [(blob_id, len(chunk)) for blob_id, chunk in fresh]
        self.sealing = (pack, blobs, self.encoders.map(seal, fresh))  # submitted now, in order

    def settle(self) -> None:
        """Add the group being sealed to its pack (waiting for the encoder threads), and hand the
        pack over if that filled it: before any other blob is stored, and before a batch ends."""
        if self.sealing is None:
            return
        pack, blobs, sealed = self.sealing
        self.sealing = None
        for (blob_id, size), blob in zip(blobs, sealed):
            pack.add(blob_id, blob, size)
        if pack.size >= self.pack_size:
            self.hand_over()

    def hand_over(self) -> None:
        """Finish the open pack and give it to the parent, who answers with the next pack's key."""
        self.settle_asked()  # its answer comes before the key
        self.settle()
        pack, self.pack = self.pack, None
        if pack is None:
            return
        if not len(pack):
            pack.discard()
            return
        try:
            pack_id, path, entries = pack.finish()
        except BaseException:
            pack.discard()
            raise
        self.channel.send(("pack", pack_id, path, entries, pack.md5))
        answer = self.inbox.reply()
        if answer[0] != "sealer":
            raise Stopped
        self.crypter = self.base.with_encryption_key(answer[1])
        self.prelude = answer[2]

    def discard(self) -> None:
        if self.pack is not None:
            self.pack.discard()
            self.pack = None


def serve(channel: Channel) -> None:
    """Answer the parent until it says ``quit`` or goes away."""
    first = channel.recv()
    inbox = Inbox(channel)
    worker = Worker(channel, first[1], inbox)
    channel.send(("ready", os.getpid()))
    try:
        while True:
            message = inbox.job()
            if message[0] == "files":
                worker.files(message[1])
            elif message[0] == "subtree":
                worker.subtree(*message[1:])
            elif message[0] == "part":
                worker.part(*message[1:])
            elif message[0] == "finish":
                with contextlib.suppress(Stopped):  # refused: the backup is failing, the pack goes anyway
                    worker.settle_asked()
                    worker.answered(wait=True)
                with contextlib.suppress(Stopped):
                    worker.hand_over()
                channel.send(("finished",))
            elif message is _GONE:
                raise EOFError("the parent closed the worker channel")
            else:  # quit
                return
    except (EOFError, BrokenPipeError):
        return  # the parent is gone: nobody will upload what is staged
    except BaseException as exc:  # tell the parent why, then end
        with contextlib.suppress(OSError):
            channel.send(("error", type(exc).__name__, str(exc)))
        raise
    finally:
        worker.discard()
        if worker.encoders is not None:
            worker.encoders.shutdown(wait=False)


def main() -> None:
    """Entry point: the protocol on stdin/stdout; stray prints go to stderr, not into the channel."""
    out = os.dup(1)
    os.dup2(2, 1)
    limit_heap_fragmentation()  # chunk copies and sealed blobs: freed memory goes back at once
    serve(Channel(0, out))
    skip_exit_collection()  # the parent waits for this process to end


if __name__ == "__main__":
    main()
