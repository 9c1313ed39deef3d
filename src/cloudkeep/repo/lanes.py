"""A first backup's worker processes as lanes: jobs sent ahead, each worker read by a thread of its own.

A pool thread that sent its worker a batch and waited for the answer left the worker idle at each
hand-off, for as long as the parent's GIL took to come round to that thread. A lane queues jobs at
its worker (``ProcWorker.send_job``) and one thread relays it (``ProcWorker.relay``): the worker
takes its next job the moment it ends one. Jobs are batches of files and whole folders
(``procsubtree.py``); each lane holds at most ``LANE_WORK`` of them, and the walk picks the lane
with the least.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from cloudkeep.repo.procpool import ProcPool, ProcWorker, WorkerLostError

if TYPE_CHECKING:
    from concurrent.futures import Future

# Work queued at one worker at most: content bytes and ``filecontent.FILE_WORK`` per entry (a few
# jobs, so that it never waits for the next one, and the walk stays near what is being stored).
LANE_WORK = 32 * 2**20


class Lane:
    """One worker process and the work queued at it (under ``Lanes.lock``)."""

    def __init__(self) -> None:
        self.worker: ProcWorker | None = None
        self.work = 0


class Lanes:
    """The lanes of one backup: started together, closed when the walk is over."""

    def __init__(
        self,
        procs: ProcPool,
        count: int,
        progress: Callable[[str | None], bool],
        out: Callable[[tuple[Any, ...]], object],
        fail: Callable[[BaseException], None],
    ) -> None:
        self.procs, self.progress, self.out, self.fail = procs, progress, out, fail
        self.lanes = [Lane() for _ in range(count)]
        self.relays = ThreadPoolExecutor(max_workers=count, thread_name_prefix="ck-lane")
        self.running: list[Future[None]] = []
        self.lock = threading.Lock()
        self.room = threading.Condition(self.lock)
        self.closing = False
        self.starting = 0  # workers not started yet (nor failed to)

    def start(self) -> None:
        if not self.running:
            self.starting = len(self.lanes)
            self.running = [self.relays.submit(self._relay, lane) for lane in self.lanes]

    def _relay(self, lane: Lane) -> None:
        """A lane's thread: start its worker, then relay it until the walk is over."""
        worker = self.procs.relayed_worker()
        with self.lock:
            self.starting -= 1
            lane.worker = worker
            closing = self.closing
            self.room.notify_all()
        if worker is None:
            return  # the pool's threads read what this lane would have
        try:
            if closing:  # the walk ended while it started
                worker.finish()
            worker.relay(self.progress, self.out, self.fail)
        except BaseException as exc:  # (``finish`` found it gone)
            self.fail(exc)
        finally:
            with self.lock:
                self.room.notify_all()

    def take(self, work: int, *, wait: bool = False) -> Lane | None:
        """The lane with the least work queued, if it has room for ``work`` more (counted there
        until ``done``); with ``wait``, waits for room (and for workers still starting) while a
        lane runs. None: none takes it."""
        with self.lock:
            while not self.closing:
                live = [lane for lane in self.lanes if lane.worker is not None and not lane.worker.closed]
                if live:
                    lane = min(live, key=lambda one: one.work)
                    if lane.work < LANE_WORK:
                        lane.work += work
                        return lane
                elif not self.starting:
                    return None
                if not wait:
                    return None
                self.room.wait()
            return None

    def done(self, lane: Lane, work: int) -> None:
        with self.lock:
            lane.work -= work
            self.room.notify_all()

    def send(
        self, lane: Lane, work: int, job: tuple[Any, ...], result: Callable[[tuple[Any, ...] | None], None]
    ) -> bool:
        """Queue ``job`` at ``lane`` (``take`` counted its work); ``result`` gets its answer (None if
        the worker was lost) on the lane's thread. False when the worker is gone already: the
        backup fails (``fail`` hears why)."""
        assert lane.worker is not None

        def answered(message: tuple[Any, ...] | None) -> None:
            self.done(lane, work)
            result(message)

        try:
            lane.worker.send_job(job, answered)
        except WorkerLostError as exc:
            self.done(lane, work)
            self.fail(exc)
            return False
        return True

    def close(self) -> None:
        """The walk is over: each worker hands its open pack to the writer, then its relay ends
        (a worker still starting does so once started)."""
        with self.lock:
            self.closing = True
            workers = [lane.worker for lane in self.lanes if lane.worker is not None]
            self.room.notify_all()
        for worker in workers:
            if not worker.closed:  # a relay that failed has said so (``fail``)
                worker.finish()
        self.relays.shutdown(wait=True)

    def abort(self) -> None:
        """After a failure (the workers are killed already): the relays end."""
        with self.lock:
            self.closing = True
            self.room.notify_all()
        self.relays.shutdown(wait=True, cancel_futures=True)
