"""Server-queue consumers: verify every machine message and apply it at most once.

All machines post to one server queue; any number of consumer threads (and processes, on
PostgreSQL) compete for it. Each message is verified with the *sending machine's* registered
key, and a result is applied by a conditional UPDATE on its ``CommandRecord`` (``sent/running →
done/failed``), so a redelivered, replayed or concurrently consumed result changes nothing the
second time. A result naming another machine's command is refused (impersonation). Messages
that fail validation are logged and dead-lettered, never applied.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update

from cloudkeep.protocol import Envelope, ProtocolError
from cloudkeep.protocol.bodies import Heartbeat, Progress, Result
from cloudkeep.providers.base import Queue, ReceivedMessage
from cloudkeep.server import metrics, read_point, result_notify
from cloudkeep.server.clock import utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import CommandRecord, SessionTask
from cloudkeep.server.heartbeats import HeartbeatWriter, apply_heartbeats
from cloudkeep.server.machine_keys import MachineKeys, report_validator

log = logging.getLogger(__name__)
OPEN_STATES = ("sent", "running")
RECEIVE_MAX = 10  # SQS's maximum per receive


class Impersonation(ProtocolError):
    """A machine reported on a command that was sent to another machine."""

    reason = "impersonation"


def server_queue_name(server_id: str) -> str:
    """The contract name (same as the rescan side): ``ck-<server_id>-server``."""
    return f"ck-{server_id}-server"


class ResultSignals:
    """Wakes whoever waits on a command in this process as soon as its result is committed here.

    Without it every waiting task polls its ``CommandRecord``: at fleet scale (hundreds of tasks
    waiting at once) that polling was most of the database's reads and added up to a poll
    interval to every round trip. Results applied by another process are still seen by polling.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def watch(self, command_id: str) -> threading.Event:
        with self._lock:
            return self._waiting.setdefault(command_id, threading.Event())

    def forget(self, command_id: str) -> None:
        with self._lock:
            self._waiting.pop(command_id, None)

    def notify(self, command_id: str) -> None:
        with self._lock:
            event = self._waiting.get(command_id)
        if event is not None:
            event.set()


RESULTS = ResultSignals()


def apply_report(ctx: ServerContext, envelope: Envelope) -> str:
    """Apply a verified machine message; returns what happened (``applied``, ``duplicate``, …)."""
    body = envelope.parsed_body()
    if isinstance(body, Heartbeat):
        return apply_heartbeats(ctx, [(envelope, body)])[0]
    assert isinstance(body, Result | Progress)
    with ctx.db() as session:
        record = session.get(CommandRecord, body.command_id)  # read once: owner, state, channel (issue 18)
        if record is None:
            log.warning(
                "%s for unknown command %s from %s ignored", envelope.kind, body.command_id, envelope.sender
            )
            return "unknown-command"
        owner = record.machine_id
        if owner != envelope.sender:
            raise Impersonation(
                f"machine {envelope.sender} reported on command {body.command_id} of machine {owner}"
            )
        if not isinstance(body, Result):
            return _apply_progress(session, record, envelope, body)
        outcome = _apply_result(session, record, body)
        if outcome == "applied":
            result_notify.announce(session, body.command_id)  # other processes' waiters, on commit
    if outcome == "applied":  # committed: a waiter woken now reads the result
        RESULTS.notify(body.command_id)
    return outcome


def _apply_result(session: Any, record: CommandRecord, body: Result) -> str:
    now = utcnow()
    channel, sent_at = record.channel, record.sent_at
    changed = session.execute(
        update(CommandRecord)
        .where(CommandRecord.id == body.command_id, CommandRecord.state.in_(OPEN_STATES))
        .values(state="done" if body.ok else "failed", result=body.model_dump(mode="json"), completed_at=now)
    ).rowcount
    if changed != 1:
        return "duplicate"
    sent = sent_at if sent_at.tzinfo else sent_at.replace(tzinfo=UTC)
    metrics.record_command(channel, body.ok, (now - sent).total_seconds())
    return "applied"


def _apply_progress(session: Any, record: CommandRecord, envelope: Envelope, body: Progress) -> str:
    data = {**body.model_dump(mode="json"), "issued_at": envelope.issued_at.isoformat()}
    if record.state not in OPEN_STATES:
        return "late-progress"
    previous = (record.result or {}).get("progress") or {}
    if previous.get("issued_at", "") > data["issued_at"]:
        return "stale-progress"  # competing consumers may apply progress out of order
    changed = session.execute(
        update(CommandRecord)
        .where(CommandRecord.id == body.command_id, CommandRecord.state.in_(OPEN_STATES))
        .values(state="running", result={"progress": data})
    ).rowcount
    if changed and record.task_id:
        task = session.get(SessionTask, record.task_id)
        if task is not None:
            task.bytes_read = body.bytes_read
            task.bytes_transferred = body.bytes_uploaded
            task.files = body.files
            if body.bytes_total:
                task.progress = min(1.0, body.bytes_read / body.bytes_total)
            task.stats = {**(task.stats or {}), "rate": body.rate, "eta_seconds": body.eta_seconds}
    return "applied" if changed else "late-progress"


class ServerQueueConsumer:
    """Reader threads competing on the server queue of one cloud account, plus a heartbeat writer.

    Readers verify every message; results and progress are applied at once, heartbeats go to the
    writer (``heartbeats.HeartbeatWriter``), which applies them in batches. ``workers=0`` starts
    nothing: ``process`` then applies one message inline (the dispatcher's bounded drain).
    """

    def __init__(
        self,
        ctx: ServerContext,
        queue: Queue,
        *,
        workers: int = 2,
        wait_seconds: float = 5.0,
        visibility_timeout: int = 60,
        credential_id: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.credential_id = credential_id  # set: the read point is published for other processes
        self.queue = queue
        self.workers = workers
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout  # how soon a message not acked is delivered again
        self.keys = MachineKeys(ctx)
        self.validator = report_validator(ctx, self.keys)
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._polling: set[str] = set()  # names of the workers waiting in receive
        self.heartbeats: HeartbeatWriter | None = None
        self.backlogged = False  # the last receive came back full
        self._published: tuple[float, datetime | None] | None = None  # when, and what

    def start(self) -> ServerQueueConsumer:
        if self.workers:
            self.heartbeats = HeartbeatWriter(self.ctx, self.queue, self._count, self.stopping).start()
        for n in range(self.workers):
            thread = threading.Thread(target=self._run, name=f"ck-consumer-{n}", daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    @property
    def read_point(self) -> datetime | None:
        """While the queue is backed up (the last receive came back full): every message sent before
        this time has been applied. None when the consumers keep up (the database is then current)."""
        if self.heartbeats is None or not self.backlogged:
            return None
        return self.heartbeats.read_point

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers without waiting out a long poll (SQS: 20 s).

        A worker applying a message finishes it (up to ``timeout``); one waiting in ``receive`` is
        not waited for: when its poll returns it hands back what it got (visible again at once) and
        ends — the threads are daemons, so a process exit does not wait for them either. The
        heartbeat writer applies and acks what it was handed before it ends.
        """
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            while thread.is_alive() and thread.name not in self._polling and time.monotonic() < deadline:
                thread.join(0.05)
        if self.heartbeats is not None:
            self.heartbeats.join(max(0.0, deadline - time.monotonic()))

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def _run(self) -> None:
        name = threading.current_thread().name
        failures = 0
        while not self.stopping.is_set():
            self._polling.add(name)
            started = utcnow()
            try:
                messages = self.queue.receive(
                    max_messages=RECEIVE_MAX,
                    visibility_timeout=self.visibility_timeout,
                    wait_seconds=self.wait_seconds,
                )
                failures = 0
            except Exception as exc:
                if self.stopping.is_set():
                    break
                failures += 1
                log.warning("server queue %s: receive failed (%s); retrying", self.queue.name, exc)
                self.stopping.wait(min(15.0, 0.2 * 2**failures))
                continue
            finally:
                self._polling.discard(name)
            if self.stopping.is_set():
                self._release(messages)
                break
            self.backlogged = len(messages) >= RECEIVE_MAX
            try:
                self.process_batch(messages)
            except Exception:  # a reader that dies silently stops the whole fleet's results
                log.exception("server queue %s: a batch failed; its messages will be redelivered",
                              self.queue.name)  # fmt: skip
                continue
            if len(messages) < RECEIVE_MAX and self.heartbeats is not None:
                # A short receive found nothing more: everything sent before it started (before it
                # returned, when it came back empty) is now handed over.
                self.heartbeats.mark(utcnow() if not messages else started)
            self.publish_read_point()

    def publish_read_point(self, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        """Share the read point through the database (``read_point``) when it changed (at most every
        ``MIN_INTERVAL_SECONDS``: readers of a backed-up queue apply ten messages a batch), and at
        least every ``REFRESH_SECONDS`` so that readers know this consumer is alive; a failure only logs."""
        if self.credential_id is None:
            return
        point, now = self.read_point, monotonic()
        with self._lock:
            last = self._published
            if last is not None and now - last[0] < (
                read_point.REFRESH_SECONDS if last[1] == point else read_point.MIN_INTERVAL_SECONDS
            ):
                return
            self._published = (now, point)
        try:
            read_point.publish(self.ctx, self.credential_id, point, utcnow())
        except Exception as exc:
            with self._lock:
                self._published = None  # retried after the next batch
            log.warning("server queue %s: could not publish the read point: %s", self.queue.name, exc)

    def _release(self, messages: list[ReceivedMessage]) -> None:
        """Hand back what a poll returned after ``stop``: visible again at once for other servers."""
        for message in messages:
            try:
                self.queue.extend_visibility(message, 0)
            except Exception as exc:  # the queue may be closed: then it reappears after its timeout
                log.debug("could not release message %s: %s", message.message_id, exc)

    def process(self, message: ReceivedMessage) -> str:
        """Verify and apply one message inline (heartbeats too); its outcome."""
        outcome = self._process(message, inline=True)
        self._count(outcome)
        return outcome

    def process_batch(self, messages: list[ReceivedMessage]) -> None:
        """Verify a received batch (keys loaded at once); heartbeats go to the writer when it runs.

        Each message succeeds or fails on its own: one that cannot be applied (a database error, a
        queue error) is left to be delivered again, and after ``max_receive_count`` deliveries the
        queue dead-letters it; the rest of the batch is applied.
        """
        try:
            self.keys.prefetch({sender for sender in map(_sender_of, messages) if sender})
        except Exception as exc:  # each message then looks its sender's key up on its own
            log.warning("server queue %s: could not load the senders' keys (%s)", self.queue.name, exc)
        for message in messages:
            try:
                outcome = self._process(message, inline=self.heartbeats is None)
            except Exception:
                log.exception("could not process message %s; it will be redelivered", message.message_id)
                outcome = "error"
            if outcome != "handed-over":
                self._count(outcome)

    def _process(self, message: ReceivedMessage, *, inline: bool) -> str:
        try:
            envelope = self.validator.validate(message.body)
            body = envelope.parsed_body()
            if isinstance(body, Heartbeat) and not inline:
                assert self.heartbeats is not None
                self.heartbeats.put(message, envelope, body)
                return "handed-over"  # applied and acked by the writer
            outcome = apply_report(self.ctx, envelope)
        except ProtocolError as exc:
            log.warning(
                "dead-lettering message %s on %s: %s: %s",
                message.message_id,
                self.queue.name,
                exc.reason,
                exc,
            )
            try:
                self.queue.dead_letter(message, f"{exc.reason}: {exc}")
            except Exception as queue_error:  # rejected again when it comes back
                log.warning("could not dead-letter message %s: %s", message.message_id, queue_error)
            return f"rejected:{exc.reason}"
        except Exception:
            log.exception("could not apply message %s; it will be redelivered", message.message_id)
            return "error"
        try:
            self.queue.ack(message)
        except Exception as exc:  # applied at most once: the redelivery is a harmless duplicate
            log.warning("could not ack message %s: %s", message.message_id, exc)
        return outcome


def _sender_of(message: ReceivedMessage) -> str | None:
    """The claimed sender, read without trust (only to load keys in bulk; validation decides)."""
    try:
        data = json.loads(message.body)
    except ValueError:
        return None
    sender = data.get("sender") if isinstance(data, dict) else None
    return sender if isinstance(sender, str) and len(sender) <= 200 else None
