"""The parent side of a restore's worker process (``restoreworker.py``).

A restore of many small files is bound by its one general decoder thread: a few short system
calls per file with Python around each, on one GIL shared with planning. The worker process is
one more taker of the run reader's general line (``RunReader.add_taker``): its thread here sends
each segment it is given — the bytes read, the blobs in them, the pack's key and the files they
go to — and returns at once (up to ``WINDOW`` segments ahead); a second thread takes the
worker's answers and records them as the restore's own (failed files, identities, warnings,
bytes written). Both wait on pipes almost all the time, so the GIL stays with planning and the
parent's decoders while the worker writes on the other core.

A worker that dies (killed, out of memory) or reports a failure stops the restore with that
error, as a failing decoder thread does.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Callable
from typing import Any

from cloudkeep.errors import CloudkeepError
from cloudkeep.repo.confidential import PACK_PRELUDE_SIZE
from cloudkeep.repo.procpool import (
    QUIT_TIMEOUT_S,
    WorkerLostError,
    await_start,
    end,
    how_it_ended,
    spawn,
    worker_error,
)
from cloudkeep.repo.repository import Repository
from cloudkeep.repo.restorefiles import RestoredFile, Target, TargetWriter
from cloudkeep.repo.runreader import Request, Segment

RERUN = "run the restore again into an empty folder"
WINDOW = 2  # segments sent and not yet answered: the worker never waits for the parent's GIL


class RestoreProc:
    """One worker process, fed by one run-reader taker thread (``handle``)."""

    def __init__(
        self,
        writer: TargetWriter,
        repo: Repository,
        batches: list[dict[bytes, list[Target]]],
        written: Callable[[int], None],
        settled: Callable[[int, int], None],
        fail: Callable[[BaseException], None],
    ) -> None:
        self.writer, self.repo, self.batches = writer, repo, batches
        self.written, self.settled, self.fail = written, settled, fail
        root = writer.dirs.root
        self.proc, self.channel = spawn("restoreworker", pass_fds=(root,))
        self.window = threading.Semaphore(WINDOW)
        # per segment sent: its files, its batch and how many of the batch's targets it holds
        self.pending: dict[int, tuple[list[RestoredFile], int, int]] = {}
        self.seq = 0
        self.sent_dirs = 1  # folder 0 is the target itself: the worker starts with it
        self.error: BaseException | None = None
        self.receiver = threading.Thread(target=self._receive, name="ck-restore-answers", daemon=True)
        try:
            self.channel.send(("init", {"root": root}))
        except OSError:
            self.kill()
            raise self.lost() from None
        self.receiver.start()

    def handle(self, request: Request, segment: Segment, view: memoryview) -> None:
        """Send one segment to the worker (on the taker thread; returns once it is in the pipe)."""
        self.window.acquire()
        if self.error is not None:
            self.window.release()
            raise self.error
        base, by_blob, dirs = segment.start, self.batches[request.batch], self.writer.dirs
        prelude = bytes(view[:PACK_PRELUDE_SIZE]) if base == 0 else None
        key = self.repo.pack_crypter(request.pack_id, prelude).key
        slots: dict[int, int] = {}
        files: list[RestoredFile] = []
        specs: list[tuple[Any, ...]] = []
        entries: list[tuple[int, int, str, bytes, int]] = []
        targets: list[list[tuple[int, int]]] = []
        settled = 0
        for entry in segment.entries:
            wanted = []
            for target in by_blob[entry.id]:
                settled += 1
                file = target.file
                if file.failed:
                    continue
                slot = slots.get(id(file))
                if slot is None:
                    slot = slots[id(file)] = len(files)
                    files.append(file)
                    specs.append(_spec(file))
                    file.meta = None  # a one-chunk file's metadata is the worker's to apply now
                wanted.append((slot, target.offset))
            entries.append((entry.offset - base, entry.length, entry.type, entry.id, entry.raw_length))
            targets.append(wanted)
        known = len(dirs.names)  # folders are only ever appended, names last
        folders = list(zip(dirs.parents[self.sent_dirs : known], dirs.names[self.sent_dirs : known]))
        self.sent_dirs = known
        seq, self.seq = self.seq, self.seq + 1
        self.pending[seq] = files, request.batch, settled
        message = (
            "segment",
            seq,
            request.pack_id,
            (key.encryption, key.id_key),
            folders,
            entries,
            targets,
            specs,
        )
        try:
            self.channel.send((*message, len(view)), view)
        except OSError:
            raise self.lost() from None

    def _receive(self) -> None:
        """Take the worker's answers until it says ``bye`` or fails (its own thread). A worker
        that never says ``ready`` is killed, so that a taker blocked writing to it fails too."""
        try:
            await_start("restore", self.proc, self.channel, hint=RERUN)
            while True:
                message = self.channel.recv()
                kind = message[0]
                if kind == "done":
                    self._done(*message[1:])
                elif kind == "error":
                    raise worker_error("restore", *message[1:])
                elif kind == "bye":
                    return
        except (EOFError, OSError):
            self._failed(self.lost())
        except BaseException as exc:
            self._failed(exc)

    def _done(
        self,
        seq: int,
        written: int,
        failed: list[int],
        known: list[tuple[int, tuple[int, int]]],
        errors: list[str],
        warnings: list[str],
    ) -> None:
        files, batch, settled = self.pending.pop(seq)
        writer = self.writer
        with writer.lock:
            for slot in failed:
                file = files[slot]
                if not file.failed:
                    file.failed = True
                    writer.failed_files += 1
            for slot, identity in known:
                files[slot].identity = (int(identity[0]), int(identity[1]))
            writer.result.errors.extend(errors)
            writer.result.warnings.extend(warnings)
        self.window.release()
        self.settled(batch, settled)
        self.written(written)

    def _failed(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.fail(exc)
        for _ in range(WINDOW):  # the sender may wait for an answer that will not come
            self.window.release()

    def finish(self) -> None:
        """After the last segment was sent: wait for every answer, then end the worker."""
        if self.error is None:
            try:
                self.channel.send(("quit",))
            except OSError:
                self._failed(self.lost())
        self.receiver.join()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(QUIT_TIMEOUT_S)
        self.kill()
        if self.error is not None:
            raise self.error

    def kill(self) -> None:
        """End the worker now (the restore failed elsewhere, or it is done)."""
        if self.proc.poll() is None:
            self.proc.kill()
        if self.receiver.is_alive():  # it sees the pipe close, before the pipe is gone
            self.receiver.join()
        end(self.proc)

    def lost(self) -> CloudkeepError:
        return WorkerLostError(
            f"a restore worker process (pid {self.proc.pid}) ended in the middle of the restore "
            f"({how_it_ended(self.proc)})",
            hint=RERUN + "; if it recurs, check the machine's memory (the kernel's OOM killer) and its logs",
        )


def _spec(file: RestoredFile) -> tuple[Any, ...]:
    """What the worker needs of a file (``restoreworker.FileSpec``)."""
    meta = file.meta
    wire = None if meta is None else (*meta[:5], dict(meta.xattrs))  # a plain tuple and dict to pickle
    return (
        file.dir,
        file.name,
        file.path,
        file.size,
        file.sparse,
        file.single,
        file.linked,
        file.mode,
        file.identity,
        wire,
    )
