"""The parent side of the file-content worker processes (``procworker.py``).

One ``ProcWorker`` per file-pool thread: the thread hands its worker a batch of files and, while
the worker reads them, answers its questions (which chunks are new: ``BlobWriter.reserve``) and
uploads the packs it finishes (``BlobWriter.adopt_pack``). The thread waits on a pipe most of
the time, so the GIL is left to the walk and the trees while the workers use the other cores.

Workers are started with ``subprocess`` (no ``fork`` of a threaded agent, no ``multiprocessing``
re-import of the agent's main module, no resource tracker) and inherit no descriptor but their
pipes: not the repository's lock, sockets or staging files. A worker that dies (killed, out of
memory) ends the backup with ``WorkerLostError``; the blobs it held in its open pack were
promised to files, so nothing of the run is committed, and what was uploaded is reused by the
rerun. Its staging file is removed here.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import select
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Optional

import cloudkeep
from cloudkeep import errors
from cloudkeep.errors import CloudkeepError
from cloudkeep.repo.channel import Channel
from cloudkeep.repo.chunker import ChunkerParams
from cloudkeep.repo.fsmeta import StatKey
from cloudkeep.repo.pack import STAGING_PACK_PREFIX, private_staging_dir
from cloudkeep.repo.writer import BlobWriter

log = logging.getLogger(__name__)

# Loads procworker without running ``cloudkeep/repo/__init__.py`` (the whole API: 0.55 s and
# 36 MB per worker instead of 0.2 s and 23 MB): the package is registered bare first.
_BOOT = (
    "import os, sys, types, cloudkeep; "
    "p = types.ModuleType('cloudkeep.repo'); p.__path__ = [os.path.join(cloudkeep.__path__[0], 'repo')]; "
    "sys.modules['cloudkeep.repo'] = p; "
    "from cloudkeep.repo.{module} import main; main()"
)
# A worker that has not said "ready" by then is killed (a backup then reads files in threads, a
# restore fails): an interpreter stuck importing (a hung network mount on its path) hangs neither.
START_TIMEOUT_S = 30.0
QUIT_TIMEOUT_S = 5.0
# A worker's pipes hold this much (Linux's default 64 KiB held one batch's results: the worker
# waited to write until the parent's GIL came round to the thread reading them).
PIPE_BYTES = 2**20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

FileItem = tuple[str, StatKey]  # host path, stat key (as the walk took it)
# its node's tree text, encoded (None: unreadable), its chunk ids concatenated, bytes read, (errno,
# why) when unreadable, whether it has no xattrs
FileResult = tuple[Optional[bytes], bytes, int, Optional[tuple[int, str]], bool]


class WorkerLostError(CloudkeepError):
    """A worker process ended in the middle of a backup (nothing is committed) or a restore."""


def spawn(module: str, pass_fds: tuple[int, ...] = ()) -> tuple[subprocess.Popen[bytes], Channel]:
    """Start ``cloudkeep.repo.<module>``'s ``main`` in a new interpreter, talking over its stdin and
    stdout; it inherits no descriptor but those and ``pass_fds``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(cloudkeep.__file__)))
    paths = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}  # the agent may set sys.path itself
    pipe = subprocess.PIPE
    command = [sys.executable, "-c", _BOOT.format(module=module)]
    proc = subprocess.Popen(command, stdin=pipe, stdout=pipe, env=env, close_fds=True, pass_fds=pass_fds)
    assert proc.stdin is not None and proc.stdout is not None
    for fd in (proc.stdin.fileno(), proc.stdout.fileno()):  # a smaller pipe only makes writers wait
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
    return proc, Channel(proc.stdout.fileno(), proc.stdin.fileno())


def await_start(what: str, proc: subprocess.Popen[bytes], channel: Channel, hint: str | None = None) -> None:
    """Return once the worker said something (or ended); kill it past ``START_TIMEOUT_S`` and
    raise ``WorkerLostError``."""
    poller = select.poll()
    poller.register(channel.read_fd, select.POLLIN)
    if not poller.poll(START_TIMEOUT_S * 1000):
        proc.kill()
        late = f"did not start within {START_TIMEOUT_S:g} s"
        raise WorkerLostError(f"a {what} worker process (pid {proc.pid}) {late}", hint=hint)


def how_it_ended(proc: subprocess.Popen[bytes]) -> str:
    """Why a worker's pipe closed, for messages: its signal or exit status (waited for a while)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(QUIT_TIMEOUT_S)
    code = proc.returncode
    return f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"


def end(proc: subprocess.Popen[bytes]) -> None:
    """Kill a worker if it still runs, reap it and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def worker_error(what: str, kind: str, message: str, hint: str | None = None) -> CloudkeepError:
    """The error a worker process reported (as its class name and message), typed again."""
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, CloudkeepError):
        return cls(message, hint=hint)
    return WorkerLostError(f"a {what} worker process failed: {kind}: {message}")


class ProcWorker:
    """One worker process, used by one thread at a time."""

    def __init__(self, writer: BlobWriter, staging: str, chunker: ChunkerParams) -> None:
        self.writer = writer
        self.staging = staging
        self.tag = secrets.token_hex(6) + "-"
        self.adopted: set[str] = set()
        # Jobs sent ahead (``send_job``): their result handlers, in order; a lane thread reads
        # the worker (``relay``) while other threads send. Under ``send_lock``, as every write.
        self.send_lock = threading.Lock()
        self.waiting: deque[Callable[[tuple[Any, ...] | None], None]] = deque()
        self.relayed = False  # a lane's: ``relay`` reads it to its end
        self.closed = False  # its relay ended: no job goes to it any more
        self.proc, self.channel = spawn("procworker")
        key, prelude = writer.new_sealer()
        repo = writer.repo
        init = {
            "key": key,
            "prelude": prelude,
            "id_key": repo.crypter.key.id_key,
            "level": repo.crypter.compression_level,
            "chunker": chunker.to_json(),  # the repository config's own form: every field, one reader
            "pack_size": repo.config.pack_size,
            "staging": staging,
            "tag": self.tag,
            "md5": writer.pack_md5,
        }
        try:
            self.channel.send(("init", init))
            await_start("backup", self.proc, self.channel)
            self.pid = int(self.recv()[1])  # "ready": it imported and set up
        except BaseException:
            self.kill()
            raise

    def run(self, items: list[FileItem], progress: Callable[[str | None], bool]) -> list[FileResult | None]:
        """Store ``items``; each result is None when ``progress`` (asked at each chunk group, with
        the file's path) said stop before that file was read. The batch's last group is reserved
        here and answered at once; the worker stores it as it takes its next job (``procworker``)."""
        self.channel_send(("files", items))
        while True:
            message = self.recv()
            if self.answer(message, progress):
                continue
            if message[0] == "done":
                self.answer_tail(message[2], progress)
                results: list[FileResult | None] = message[1]
                return results

    def answer(self, message: tuple[Any, ...], progress: Callable[[str | None], bool]) -> bool:
        """Answer the worker's questions mid-job: which chunks are new, the next pack's key."""
        kind = message[0]
        if kind == "ids":
            go = progress(message[2])
            self.channel_send(("new", self.writer.reserve(message[1])) if go else ("stop",))
        elif kind == "pack":
            self.adopt(*message[1:])
        else:
            return False
        return True

    def answer_tail(self, ids: list[bytes], progress: Callable[[str | None], bool]) -> None:
        """Which chunks of a job's last group are new: reserved now, stored by the worker later."""
        if ids:
            go = progress(None)
            self.channel_send(("tail", ("new", self.writer.reserve(ids)) if go else ("stop",)))

    def send_job(self, message: tuple[Any, ...], done: Callable[[tuple[Any, ...] | None], None]) -> None:
        """Queue a job for a relayed worker; ``done`` gets its result message (None if it never
        comes: the worker was lost), on the relay's thread."""
        with self.send_lock:
            if self.closed:
                raise WorkerLostError("the backup worker process is gone")
            self.waiting.append(done)
            try:
                self.channel.send(message)
            except OSError:
                self.waiting.pop()
                raise self.lost() from None

    def relay(
        self,
        progress: Callable[[str | None], bool],
        out: Callable[[tuple[Any, ...]], object],
        failed: Callable[[BaseException], None],
    ) -> None:
        """Read the worker until it has ``finish``ed (the lane's thread): answer its questions, pass
        each job's result to its handler, ``out`` what folder jobs send on the way. When the worker
        fails or is lost, ``failed`` hears why first, then the jobs still waiting get None."""
        try:
            while True:
                message = self.recv()
                if self.answer(message, progress):
                    continue
                kind = message[0]
                if kind == "out":
                    out(message[1:])
                elif kind in ("done", "subtree", "part"):
                    self.answer_tail(message[-1], progress)
                    with self.send_lock:
                        done = self.waiting.popleft()
                    done(message)
                elif kind == "finished":
                    return
        except BaseException as exc:
            failed(exc)
        finally:
            with self.send_lock:
                self.closed = True
                waiting, self.waiting = self.waiting, deque()
            for done in waiting:
                done(None)

    def finish(self) -> None:
        """Hand over the open pack (at the end of the walk), so ``BlobWriter.flush`` uploads it,
        with the chunks of the jobs' last groups. A relayed worker's relay reads the answer."""
        self.channel_send(("finish",))
        if self.relayed:
            return
        while True:
            message = self.recv()
            if message[0] == "pack":
                self.adopt(*message[1:])
            elif message[0] == "finished":
                return

    def adopt(self, pack_id: str, path: str, entries: list[Any], md5: bytes | None) -> None:
        self.adopted.add(path)
        self.writer.adopt_pack(pack_id, path, entries, md5)
        self.channel_send(("sealer", *self.writer.new_sealer()))

    def channel_send(self, message: tuple[Any, ...]) -> None:
        try:
            with self.send_lock:
                self.channel.send(message)
        except OSError:
            raise self.lost() from None

    def recv(self) -> tuple[Any, ...]:
        try:
            message = self.channel.recv()
        except (EOFError, OSError):
            raise self.lost() from None
        if message[0] == "error":  # the worker failed and ended: e.g. no space to stage a pack
            raise worker_error("backup", message[1], message[2])
        return message

    def lost(self) -> WorkerLostError:
        return WorkerLostError(
            f"a backup worker process (pid {self.proc.pid}) ended in the middle of the backup "
            f"({how_it_ended(self.proc)}): "
            "nothing of this run is committed",
            hint="run the backup again (what was uploaded is reused); if it recurs, check the machine's "
            "memory (the kernel's OOM killer) and its logs",
        )

    def close(self, *, graceful: bool) -> None:
        """End the process (``quit``, then a kill past ``QUIT_TIMEOUT_S``) and remove its staging
        files that no upload took over."""
        if graceful and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.channel.send(("quit",))
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(QUIT_TIMEOUT_S)
        self.kill()
        with contextlib.suppress(OSError), os.scandir(self.staging) as entries:
            for entry in entries:
                if entry.name.startswith(STAGING_PACK_PREFIX + self.tag) and entry.path not in self.adopted:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def kill(self) -> None:
        end(self.proc)


class ProcPool:
    """The backup's worker processes: one per pool thread, started on the thread's first batch;
    with ``limit``, only the first ``limit`` threads to ask get one (the others read files
    themselves: on two cores one worker beside the parent's threads, not one per thread)."""

    def __init__(self, writer: BlobWriter, chunker: ChunkerParams, limit: int | None = None) -> None:
        self.writer = writer
        self.chunker = chunker
        self.limit = limit
        self.granted = 0  # threads that were given a worker (under ``lock``)
        self.staging = writer.repo.store.staging_dir or private_staging_dir()
        self.lock = threading.Lock()
        self.workers: list[ProcWorker] = []
        self.local = threading.local()
        self.disabled = False
        self.closed = False
        self.started = 0.0  # seconds spent starting workers (a bench figure)

    def worker(self) -> ProcWorker | None:
        """This thread's worker, started if need be; None when workers cannot start here (the
        thread then reads files itself, as without workers)."""
        worker: ProcWorker | None = getattr(self.local, "worker", None)
        if worker is not None or self.disabled:
            return worker
        granted: bool | None = getattr(self.local, "granted", None)
        if granted is None:  # decided once per thread: a thread refused does not ask again per batch
            with self.lock:
                granted = self.limit is None or self.granted < self.limit
                self.granted += 1 if granted else 0
            self.local.granted = granted
        if not granted:
            return None
        worker = self._start()
        self.local.worker = worker
        return worker

    def relayed_worker(self) -> ProcWorker | None:
        """A worker that takes jobs ahead and is read by one thread (``ProcWorker.relay``); None
        when workers cannot start here."""
        return None if self.disabled else self._start(relayed=True)

    def _start(self, *, relayed: bool = False) -> ProcWorker | None:
        """A new worker, counted among the backup's; None when workers cannot start here (the
        threads then read the files) or the backup failed while it started."""
        began = time.monotonic()
        try:
            worker = ProcWorker(self.writer, self.staging, self.chunker)
        except (OSError, WorkerLostError) as exc:
            log.warning("backup worker processes unavailable (%s): reading files in threads", exc)
            self.disabled = True
            return None
        worker.relayed = relayed
        with self.lock:
            if self.closed:
                worker.kill()
                return None
            self.workers.append(worker)
            self.started += time.monotonic() - began
        return worker

    def drop(self, worker: ProcWorker) -> None:
        """A worker left mid-conversation by an error: end it (a later batch starts another)."""
        self.local.worker = None
        with self.lock:
            self.workers.remove(worker)
        worker.close(graceful=False)

    def finish(self) -> None:
        """Every worker hands over its open pack (the walk is over: no thread uses them now)."""
        with self.lock:
            workers = [worker for worker in self.workers if not worker.relayed]
        for worker in workers:
            worker.finish()

    def close(self, *, graceful: bool = True) -> None:
        with self.lock:
            self.closed = True
            workers, self.workers = self.workers, []
        for worker in workers:
            worker.close(graceful=graceful)
