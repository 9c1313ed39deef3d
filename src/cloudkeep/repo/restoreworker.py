"""A restore's worker process: decode segments of packs and write the small files they hold.

Most of a real tree's restore is small files, a few short system calls each (create, write, set
times, close), with Python around every one; in one process the decoder doing that shares the
GIL with planning and every other thread, and a second decoder thread only adds hand-offs. The
worker (started by ``restoreproc.py``) takes segments the parent read — the bytes, the blobs in
them, the pack's key and where each blob goes — and decodes, verifies and writes them with the
same ``TargetWriter`` the parent's decoders use, so files come out the same whichever wrote them.

The target is reached only through the descriptor of its top folder, passed at start: folders are
opened below it by name without following links (``TargetDirs``), from the table of folders the
parent sends as it makes them. Each answer says what the parent must know: bytes written, files
that failed and why, identities of files that are hard-linked to later, metadata warnings. A
failure that ends the restore (a damaged blob, a full target) is answered as ``error`` and the
worker ends; the parent going away closes the pipe and the worker ends at its next read.
Runs on the machines' Python (3.9+); loaded alone by ``procpool.spawn``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from cloudkeep.errors import CloudkeepError
from cloudkeep.exiting import skip_exit_collection
from cloudkeep.heap import limit_heap_fragmentation
from cloudkeep.repo.channel import Channel
from cloudkeep.repo.crypto import Crypter, MasterKey
from cloudkeep.repo.fsmeta import NO_XATTRS, FileMeta
from cloudkeep.repo.pack import BlobEntry, open_blob
from cloudkeep.repo.restorefiles import RestoredFile, Target, TargetWriter
from cloudkeep.repo.targetfs import TargetDirs, data_runs

# What a file is sent as: folder index, name, path for messages ("": from the folder), size,
# sparse, single, linked, creation mode, identity, and for a one-chunk file its metadata (uid,
# gid, mode, atime_ns, mtime_ns, xattrs).
FileSpec = tuple[int, str, str, int, bool, bool, bool, int, Any, Any]


class Worker(TargetWriter):
    """The worker's view of the target: the folders the parent made, written like the parent."""

    def __init__(self, root_fd: int) -> None:
        super().__init__(TargetDirs(root_fd))
        self.crypters: dict[tuple[bytes, bytes], Crypter] = {}
        self.base: Crypter | None = None  # its buffers and zstd contexts serve every pack's crypter
        self.buffer = bytearray()

    def crypter(self, key: tuple[bytes, bytes]) -> Crypter:
        crypter = self.crypters.get(key)
        if crypter is None:
            if len(self.crypters) >= 64:  # a pack's segments come together: a few keys suffice
                self.crypters.clear()
            encryption, id_key = key
            if self.base is None or self.base.key.id_key != id_key:
                self.base = Crypter(MasterKey(encryption, id_key))
            crypter = self.crypters[key] = self.base.with_encryption_key(encryption)
        return crypter

    def segment(self, channel: Channel, message: tuple[Any, ...]) -> None:
        """Decode and write one segment; answer what happened to its files."""
        _, seq, pack_id, key, folders, entries, targets, specs, size = message
        for parent, name in folders:
            self.dirs.add(parent, name)
        if len(self.buffer) < size:
            self.buffer = bytearray(size)
        view = memoryview(self.buffer)[:size]
        channel.recv_into(view)
        files = [_file(spec) for spec in specs]
        errors, warnings = len(self.result.errors), len(self.result.warnings)
        crypter, written = self.crypter(key), 0
        for (at, length, kind, blob_id, raw), wanted in zip(entries, targets):
            entry = BlobEntry(kind, blob_id, at, length, raw)
            data = open_blob(crypter, entry, pack_id, view[at : at + length], reuse_buffer=True)
            for slot, offset in wanted:
                file = files[slot]
                if file.failed:
                    continue
                runs = data_runs(data, offset) if file.sparse else [(0, len(data))]
                self.write(Target(file, offset), data, runs)
            written += len(data) * len(wanted)
        failed = [slot for slot, file in enumerate(files) if file.failed]
        known = [(slot, file.identity) for slot, file in enumerate(files) if file.linked and file.identity]
        channel.send(
            (
                "done",
                seq,
                written,
                failed,
                known,
                self.result.errors[errors:],
                self.result.warnings[warnings:],
            )
        )
        del self.result.errors[errors:], self.result.warnings[warnings:]


def _file(spec: FileSpec) -> RestoredFile:
    folder, name, path, size, sparse, single, linked, mode, identity, meta = spec
    file = RestoredFile(folder, name, path, size, sparse, single, linked, None, identity, False, mode)
    if meta is not None:
        uid, gid, node_mode, atime_ns, mtime_ns, xattrs = meta
        file.meta = FileMeta(uid, gid, node_mode, atime_ns, mtime_ns, xattrs or NO_XATTRS)
    return file


def serve(channel: Channel) -> None:
    """Answer the parent until it says ``quit`` or goes away."""
    first = channel.recv()
    worker = Worker(first[1]["root"])
    channel.send(("ready", os.getpid()))
    try:
        while True:
            message = channel.recv()
            if message[0] == "segment":
                worker.segment(channel, message)
            else:  # quit
                channel.send(("bye",))
                return
    except (EOFError, BrokenPipeError):
        return  # the parent is gone
    except BaseException as exc:  # tell the parent why, then end
        kind = type(exc).__name__ if isinstance(exc, CloudkeepError) else "error"
        hint = getattr(exc, "hint", None)
        with contextlib.suppress(OSError):
            channel.send(("error", kind, getattr(exc, "message", None) or str(exc), hint))
        if not isinstance(exc, CloudkeepError):
            raise
    finally:
        worker.dirs.close()


def main() -> None:
    """Entry point: the protocol on stdin/stdout; stray prints go to stderr, not into the channel."""
    out = os.dup(1)
    os.dup2(2, 1)
    limit_heap_fragmentation()
    serve(Channel(0, out))
    skip_exit_collection()


if __name__ == "__main__":
    main()
