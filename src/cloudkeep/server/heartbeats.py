"""Heartbeats applied in batches, on a thread of their own.

At fleet scale heartbeats are most of the server queue (20,000 machines every 30 s: 667/s).
Applied one by one — a transaction and an ack each — they cost more CPU than one process has
while it also runs a job, the queue backs up, and results wait behind them. Here the consumer's
readers verify each heartbeat and hand it to a ``HeartbeatWriter``; the writer coalesces what
has gathered per machine (only the newest signed send time matters), writes it with one
statement in one transaction and acks the messages together. Results never wait for that.

The writer also keeps the consumers' *read point*: a time before which every message on the
queue has been applied. A heartbeat still waiting on a backed-up queue says nothing yet, so the
dispatcher judges a machine silent from that point, not from the wall clock (``Dispatcher``).
"""

from __future__ import annotations

import logging
import queue as queue_module
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Integer, bindparam, func, or_, update

from cloudkeep.protocol import Envelope
from cloudkeep.protocol.bodies import Heartbeat
from cloudkeep.providers.base import Queue, ReceivedMessage
from cloudkeep.server.clock import utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import DiscoveredMachine

log = logging.getLogger(__name__)
BATCH_MAX = 500  # heartbeats per transaction
BUFFER_MAX = 2_000  # readers wait when the writer is this far behind (messages stay hidden 60 s)
GATHER_SECONDS = 0.2  # how long the writer lets a batch gather once the first heartbeat arrived

_LAST = DiscoveredMachine.last_heartbeat_at
# Built once; guarded so an older heartbeat (redelivered, or overtaken on the queue) never moves
# the time back.
_HEARTBEAT = (
    update(DiscoveredMachine)
    .where(DiscoveredMachine.id == bindparam("machine_id"), or_(_LAST.is_(None), bindparam("sent") > _LAST))
    .values(
        last_heartbeat_at=bindparam("sent"),
        last_seen_at=bindparam("now"),
        agent_version=bindparam("version"),
        # an agent that reports no level (older than the field) keeps the one it registered
        agent_level=func.coalesce(bindparam("level", type_=Integer), DiscoveredMachine.agent_level),
    )
    .execution_options(synchronize_session=False)
)


class SeenHeartbeats:
    """Heartbeat ids seen recently: a replayed heartbeat must not fake liveness (bounded memory)."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, message_id: str) -> bool:
        with self._lock:
            if message_id in self._ids:
                return False
            self._ids[message_id] = None
            if len(self._ids) > self.size:
                self._ids.popitem(last=False)
            return True

    def forget(self, message_ids: list[str]) -> None:
        """Not applied after all (the write failed): their redelivery must count."""
        with self._lock:
            for message_id in message_ids:
                self._ids.pop(message_id, None)


SEEN = SeenHeartbeats()


def apply_heartbeats(ctx: ServerContext, beats: list[tuple[Envelope, Heartbeat]]) -> list[str]:
    """Apply verified heartbeats in one transaction; the outcome of each, in order.

    ``applied`` for the newest heartbeat of each machine in the batch, ``coalesced`` for its older
    ones (their send time is superseded), ``duplicate`` for a replayed id. The signed send time is
    what counts (capped at now): a heartbeat read late says when the machine was alive.
    """
    now = utcnow()
    outcomes = ["duplicate"] * len(beats)
    newest: dict[str, int] = {}
    added: list[str] = []
    for n, (envelope, _) in enumerate(beats):
        if not SEEN.add(envelope.id):
            continue
        added.append(envelope.id)
        outcomes[n] = "coalesced"
        best = newest.get(envelope.sender)
        if best is None or envelope.issued_at > beats[best][0].issued_at:
            newest[envelope.sender] = n
    if not newest:
        return outcomes
    rows = []
    for n in newest.values():
        envelope, body = beats[n]
        rows.append(
            {"machine_id": envelope.sender, "sent": min(envelope.issued_at, now), "now": now,
             "version": body.version, "level": body.agent_level}
        )  # fmt: skip
        outcomes[n] = "applied"
    try:
        with ctx.db() as session:
            session.connection().execute(_HEARTBEAT, rows)  # one executemany statement
    except BaseException:
        SEEN.forget(added)
        raise
    return outcomes


class HeartbeatWriter:
    """The consumer's heartbeat thread: gathers verified heartbeats, applies and acks them in batches."""

    def __init__(
        self, ctx: ServerContext, queue: Queue, count: Callable[[str], None], stopping: threading.Event
    ) -> None:
        self.ctx = ctx
        self.queue = queue
        self.count = count
        self.stopping = stopping
        self.read_point: datetime | None = None
        self._buffer: queue_module.Queue[tuple[ReceivedMessage, Envelope, Heartbeat] | datetime] = (
            queue_module.Queue(BUFFER_MAX)
        )
        self._thread = threading.Thread(target=self._run, name="ck-heartbeats", daemon=True)

    def start(self) -> HeartbeatWriter:
        self._thread.start()
        return self

    def put(self, message: ReceivedMessage, envelope: Envelope, body: Heartbeat) -> None:
        self._buffer.put((message, envelope, body))

    def mark(self, read_to: datetime) -> None:
        """Every message sent before ``read_to`` has been handed over: once what is buffered ahead of
        this mark is applied, the read point moves there."""
        self._buffer.put(read_to)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not (self.stopping.is_set() and self._buffer.empty()):
            try:
                first = self._buffer.get(timeout=0.1)
            except queue_module.Empty:
                continue
            items = [first]
            if not self.stopping.is_set():
                self.stopping.wait(GATHER_SECONDS)  # let a batch gather (readers keep filling it)
            while len(items) < BATCH_MAX:
                try:
                    items.append(self._buffer.get_nowait())
                except queue_module.Empty:
                    break
            self.flush(items)

    def flush(self, items: list[tuple[ReceivedMessage, Envelope, Heartbeat] | datetime]) -> None:
        beats = [item for item in items if not isinstance(item, datetime)]
        marks = [item for item in items if isinstance(item, datetime)]
        if beats:
            try:
                outcomes = apply_heartbeats(self.ctx, [(envelope, body) for _, envelope, body in beats])
            except Exception:
                # Not acked: the messages come back after their visibility timeout and are retried.
                log.exception("could not apply %d heartbeats; they will be redelivered", len(beats))
                for _ in beats:
                    self.count("error")
                return
            for outcome in outcomes:
                self.count(outcome)
            try:
                self.queue.ack_many([message for message, _, _ in beats])
            except Exception as exc:  # applied: a redelivery is a harmless duplicate
                log.warning("server queue %s: could not ack %d heartbeats: %s", self.queue.name,
                            len(beats), exc)  # fmt: skip
        if marks:
            newest = max(marks)
            if self.read_point is None or newest > self.read_point:
                self.read_point = newest
