"""The dispatcher: sends signed commands to machines and collects their results.

Channel per command: the machine's queue while its heartbeats are fresher than
``settings.heartbeat_timeout_seconds``; otherwise the cloud's own command channel (SSM Run
Command / Azure Run Command / a local subprocess), which runs ``python -m cloudkeep.machine
exec`` with the same signed message and returns the signed result on its last stdout line. Once
heartbeats resume, the next command goes through the queue again. The channel is recorded on the
``CommandRecord``; a result from either channel is applied by the same at-most-once code.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from cloudkeep.errors import CloudkeepError, ConfigurationError, NotFoundError, UnreachableError
from cloudkeep.protocol import make_envelope, sign_envelope
from cloudkeep.protocol.bodies import Result
from cloudkeep.protocol.crypto import load_encryption_key
from cloudkeep.providers.base import CallPacer, CloudProvider, Queue
from cloudkeep.providers.facts import ProviderFacts
from cloudkeep.server import result_notify
from cloudkeep.server.agent_compat import require_level
from cloudkeep.server.clock import utcnow
from cloudkeep.server.consumer import OPEN_STATES, RESULTS, ServerQueueConsumer, server_queue_name
from cloudkeep.server.consumer_registry import (
    consumer_queue_depths,
    consumer_read_point,
    ensure_consumers,
    stop_consumers,
)
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import CommandRecord, DiscoveredMachine, ProtectionGroup, SessionTask
from cloudkeep.server.fallback import FallbackPool, FallbackTarget, fail_command, process_pool, run_fallback
from cloudkeep.server.logs import event
from cloudkeep.server.machine_keys import MachineKeys, report_validator
from cloudkeep.server.pacing import pacer_for

__all__ = [  # the consumers' registry is reached through the dispatcher by its callers
    "CommandFailed", "CommandTimeout", "Dispatcher", "consumer_queue_depths", "ensure_consumers",
    "expire_commands", "stop_consumers",
]  # fmt: skip
log = logging.getLogger(__name__)
# Reading waiting reports before a fallback is bounded: a server queue that filled up over a long
# idle time is left to the consumers, and the command may take the fallback once.
DRAIN_MAX_MESSAGES = 500
DRAIN_SECONDS = 5.0
# How far behind the consumers may be and still vouch for a machine (see ``_backlog_reason``).
BACKLOG_GRACE_SECONDS = 600.0


class CommandFailed(CloudkeepError):
    """The machine ran the command and reported an error."""


class CommandTimeout(UnreachableError, TimeoutError):
    """No result within the wait; the command may still finish (its record stays open)."""


@dataclass(frozen=True)
class ChannelChoice:
    channel: str  # "queue" or the cloud's command channel (ssm, runcommand, local)
    reason: str


@dataclass(frozen=True)
class _Target:
    machine_id: str
    cloud_id: str
    platform: str
    region: str
    credential_id: str
    agent_queue: str | None
    encryption_key: str | None
    last_heartbeat_at: datetime | None
    name: str = ""
    agent_level: int | None = None


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Dispatcher:
    """``pacers``: each credential's pacer, which every fallback command's cloud calls go through
    (the process-wide one rescan uses too, so both share the account's budget; tests inject one).
    ``fallbacks``: the pool fallback commands run on (default: the process's, with
    ``settings.parallel_machines`` threads)."""

    def __init__(
        self,
        ctx: ServerContext,
        *,
        clock: Callable[[], datetime] = utcnow,
        pacers: Callable[[str, ProviderFacts], CallPacer] = pacer_for,
        fallbacks: FallbackPool | None = None,
    ) -> None:
        self.ctx = ctx
        self.clock = clock
        self.pacers = pacers
        self.fallbacks = fallbacks or process_pool(ctx.settings.parallel_machines)
        self.validator = report_validator(ctx, MachineKeys(ctx))
        self._providers: dict[str, CloudProvider] = {}
        self._queues: dict[tuple[str, str], Queue] = {}
        self._last_channel: dict[str, str] = {}  # per machine: logs when a machine falls back or returns
        self._lock = threading.Lock()

    # --- helpers --------------------------------------------------------------------------------

    def provider(self, credential_id: str) -> CloudProvider:
        with self._lock:
            if credential_id not in self._providers:
                self._providers[credential_id] = self.ctx.provider_for(credential_id)
            return self._providers[credential_id]

    def _queue(self, credential_id: str, name: str) -> Queue:
        key = (credential_id, name)
        with self._lock:
            queue = self._queues.get(key)
        if queue is None:
            queue = self.provider(credential_id).queues.get_queue(name)
            with self._lock:
                self._queues[key] = queue
        return queue

    def _target(self, machine_id: str) -> _Target:
        with self.ctx.db() as session:  # the machine and its group's credential in one statement
            found = session.execute(
                select(DiscoveredMachine, ProtectionGroup.credential_id)
                .join(ProtectionGroup, ProtectionGroup.id == DiscoveredMachine.protection_group_id)
                .where(DiscoveredMachine.id == machine_id)
            ).one_or_none()
            if found is None:
                raise NotFoundError(f"machine {machine_id} does not exist")
            row, credential_id = found
            encryption = (
                json.loads(row.agent_public_key).get("encryption_public_key")
                if row.agent_public_key
                else None
            )
            return _Target(
                row.id, row.cloud_id, row.platform, row.region or "", credential_id, row.agent_queue,
                encryption, _aware(row.last_heartbeat_at), row.name, row.agent_level,
            )  # fmt: skip

    def channel_for(self, target: _Target) -> str:
        """``queue`` while heartbeats are fresh, else the provider's command channel."""
        return self._choose(target)[1].channel

    def choose_channel(self, machine_id: str) -> ChannelChoice:
        """The channel the next command to ``machine_id`` would take, and why."""
        return self._choose(self._target(machine_id))[1]

    def _heartbeat_age(self, target: _Target) -> float | None:
        if target.last_heartbeat_at is None:
            return None
        return (self.clock() - target.last_heartbeat_at).total_seconds()

    def _choose(self, target: _Target) -> tuple[_Target, ChannelChoice]:
        timeout = self.ctx.settings.heartbeat_timeout_seconds
        fallback = self.provider(target.credential_id).facts.fallback_channel
        if not target.agent_queue:
            return target, ChannelChoice(fallback, "the machine has no agent queue yet")
        age = self._heartbeat_age(target)
        if age is not None and age < timeout:
            return target, ChannelChoice("queue", f"last heartbeat sent {age:.0f}s ago")
        behind = self._backlog_reason(target, timeout)
        if behind is not None:
            return target, ChannelChoice("queue", behind)
        # Heartbeats are applied only while some process consumes the server queue: in embedded
        # mode nobody does between two CLI commands. Read what is waiting (each heartbeat counts
        # from its signed send time) before concluding that the machine is gone.
        read = self._drain_reports(target.credential_id)
        if read:
            target = self._target(target.machine_id)
            age = self._heartbeat_age(target)
            if age is not None and age < timeout:
                reason = f"last heartbeat sent {age:.0f}s ago (read {read} waiting report(s) first)"
                return target, ChannelChoice("queue", reason)
        if age is None:
            return target, ChannelChoice(fallback, "no heartbeat received yet")
        return target, ChannelChoice(fallback, f"last heartbeat sent {age:.0f}s ago (limit {timeout:.0f}s)")

    def _backlog_reason(self, target: _Target, timeout: float) -> str | None:
        """Why a machine whose heartbeat looks old is still judged alive: the consumers (this
        process's, or those of others through the database) are behind on the server queue (a
        backlog), and its heartbeat is fresh as of their read point — newer heartbeats may be
        waiting unread. None when that does not hold.

        Bounded by ``BACKLOG_GRACE_SECONDS``: consumers that far behind (or stuck) prove nothing,
        and the command takes the fallback as before.
        """
        point = consumer_read_point(self.ctx, target.credential_id, self.clock())
        last = target.last_heartbeat_at
        if point is None or last is None:
            return None
        lag = (self.clock() - point).total_seconds()
        if lag <= 0 or lag > BACKLOG_GRACE_SECONDS or (point - last).total_seconds() >= timeout:
            return None
        return (
            f"last heartbeat sent {(self.clock() - last).total_seconds():.0f}s ago, but the server queue "
            f"is read only up to {lag:.0f}s ago (backlog): fresh as of that point"
        )

    def _drain_reports(self, credential_id: str) -> int:
        """Apply the reports waiting on the server queue now (bounded); returns how many were read."""
        try:
            queue = self._queue(credential_id, server_queue_name(self.ctx.server_id))
        except Exception as exc:  # deciding on a channel must not fail: the fallback still works
            log.info("server queue not readable for credential %s: %s", credential_id, exc)
            return 0
        reader = ServerQueueConsumer(self.ctx, queue, workers=0)
        deadline = time.monotonic() + DRAIN_SECONDS
        read = 0
        while read < DRAIN_MAX_MESSAGES and time.monotonic() < deadline:
            try:
                messages = queue.receive(max_messages=10, visibility_timeout=60, wait_seconds=0)
            except Exception as exc:
                log.info("server queue %s: could not read waiting reports: %s", queue.name, exc)
                break
            if not messages:
                break
            for message in messages:
                reader.process(message)
            read += len(messages)
        return read

    # --- public API -----------------------------------------------------------------------------

    def send(
        self,
        machine_id: str,
        kind: str,
        body: dict[str, Any],
        *,
        sealed: dict[str, Any] | None = None,
        task_id: str | None = None,
        ttl: float = 3600,
    ) -> str:
        """Sign and send one command; returns its id (the idempotency key). Never blocks on the result."""
        target = self._target(machine_id)
        if target.encryption_key is None:
            raise ConfigurationError(
                f"machine {machine_id} has no registered agent keys",
                hint="rescan its protection group to deploy it",
            )
        require_level(target.name or machine_id, target.agent_level, kind)  # before anything is recorded
        seal_to = load_encryption_key(target.encryption_key) if sealed is not None else None
        envelope = make_envelope(
            kind,
            body,
            sender=self.ctx.server_id,
            recipient=machine_id,
            ttl=ttl,
            secrets=sealed,
            seal_to=seal_to,
            now=self.clock(),  # the dispatcher's clock stamps the command, as it judges its expiry
        )
        text = sign_envelope(envelope, self.ctx.signing_key)
        target, choice = self._choose(target)
        channel = choice.channel
        with self.ctx.db() as session:
            session.add(
                CommandRecord(
                    id=envelope.id,
                    machine_id=machine_id,
                    kind=kind,
                    channel=channel,
                    state="sent",
                    task_id=task_id,
                    expires_at=envelope.expires_at,
                )
            )
            if task_id is not None:
                task = session.get(SessionTask, task_id)
                if task is not None:
                    task.command_id = envelope.id
        self._log_dispatch(envelope.id, kind, machine_id, choice, task_id)
        if channel == "queue":
            assert target.agent_queue is not None
            try:
                self._queue(target.credential_id, target.agent_queue).send(text)
            except Exception as exc:
                fail_command(self.ctx, envelope.id, f"could not send to queue {target.agent_queue}: {exc}")
                raise
        else:
            self.fallbacks.submit(lambda: self._run_fallback(target, envelope.id, text, ttl))
        return envelope.id

    def wait(
        self,
        command_id: str,
        *,
        timeout: float,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll: float = 0.2,
    ) -> dict[str, Any]:
        """Block until the result is applied; its payload, or ``CommandFailed`` / ``CommandTimeout``.

        A result this process applies wakes the wait at once (``consumer.RESULTS``); one applied by
        another process is seen by polling, quickly at first, then every ``poll`` seconds — on
        PostgreSQL it wakes the wait too (``result_notify``), and the row is then polled rarely.
        """
        woken = RESULTS.watch(command_id)
        slow_poll = result_notify.wait_poll(self.ctx, poll)
        try:
            return self._wait(command_id, woken, timeout=timeout, on_progress=on_progress, poll=slow_poll,
                              first_delay=slow_poll if slow_poll > poll else min(0.05, poll))  # fmt: skip
        finally:
            RESULTS.forget(command_id)

    def _wait(
        self,
        command_id: str,
        woken: threading.Event,
        *,
        timeout: float,
        on_progress: Callable[[dict[str, Any]], None] | None,
        poll: float,
        first_delay: float,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last_progress: Any = None
        delay = first_delay
        while True:
            with self.ctx.db() as session:
                record = session.get(CommandRecord, command_id)
                if record is None:
                    raise NotFoundError(f"command {command_id} does not exist")
                state, result, kind, machine = (
                    record.state,
                    record.result or {},
                    record.kind,
                    record.machine_id,
                )
            if state == "done":
                return dict(result.get("payload") or {})
            if state in ("failed", "expired"):
                raise CommandFailed(f"{kind} on machine {machine} failed: {result.get('error') or state}")
            progress = result.get("progress")
            if on_progress is not None and progress and progress != last_progress:
                last_progress = progress
                on_progress(dict(progress))
            if time.monotonic() >= deadline:
                if command_id in expire_commands(self.ctx, self.clock()):
                    continue  # it just expired: report that (CommandFailed) rather than a timeout
                raise CommandTimeout(
                    f"no result for {kind} {command_id} on machine {machine} within {timeout:.0f}s",
                    hint="check the machine's services (`cloudkeep machine show`) and the server consumers",
                )
            if woken.wait(min(delay, max(0.0, deadline - time.monotonic()))):
                woken.clear()  # read the record now; never spin on a stale wake-up
            delay = min(delay * 2, poll)

    def call(
        self,
        machine_id: str,
        kind: str,
        body: dict[str, Any],
        *,
        sealed: dict[str, Any] | None = None,
        task_id: str | None = None,
        timeout: float = 3600,
    ) -> dict[str, Any]:
        command_id = self.send(machine_id, kind, body, sealed=sealed, task_id=task_id, ttl=max(timeout, 60.0))
        return self.wait(command_id, timeout=timeout)

    def _log_dispatch(
        self, command_id: str, kind: str, machine_id: str, choice: ChannelChoice, task_id: str | None
    ) -> None:
        with self._lock:
            previous = self._last_channel.get(machine_id)
            self._last_channel[machine_id] = choice.channel
        event(log, "dispatch", command=command_id, kind=kind, machine=machine_id, task=task_id,
              channel=choice.channel, reason=choice.reason)  # fmt: skip
        if choice.channel != "queue" and previous in (None, "queue"):
            event(log, "fallback", level=logging.WARNING, machine=machine_id, channel=choice.channel,
                  reason=choice.reason)  # fmt: skip
        elif choice.channel == "queue" and previous not in (None, "queue"):
            event(log, "queue_resumed", machine=machine_id, reason=choice.reason)

    def _run_fallback(self, target: _Target, command_id: str, text: str, ttl: float) -> None:
        """On a fallback pool thread: the command over the cloud's channel, paced by the account's pacer."""
        try:
            provider = self.provider(target.credential_id)
            pacer = self.pacers(target.credential_id, provider.facts)
        except Exception as exc:
            fail_command(self.ctx, command_id, f"the command channel failed: {exc}")
            return
        where = FallbackTarget(target.machine_id, target.cloud_id, target.platform, target.region)
        run_fallback(self.ctx, provider, pacer, self.validator, where, command_id, text, ttl, self.clock)


def expire_commands(ctx: ServerContext, now: datetime) -> list[str]:
    """Mark every open command past its envelope's expiry ``expired``; returns their ids.

    The machine refuses a command after ``expires_at``, so one that never answered by then never
    will: without this sweep its record would say ``sent`` forever. A late result is ignored (results
    apply only to open records). Called by ``Dispatcher.wait`` on timeout and by the scheduler tick.
    """
    with ctx.db() as session:
        stale = list(
            session.execute(
                select(CommandRecord.id, CommandRecord.kind, CommandRecord.machine_id,
                       CommandRecord.expires_at, CommandRecord.result)
                .where(CommandRecord.state.in_(OPEN_STATES), CommandRecord.expires_at.is_not(None),
                       CommandRecord.expires_at <= now)
            )
        )  # fmt: skip
        expired = []
        for command_id, kind, machine_id, expires_at, result in stale:
            reason = (
                f"expired: machine {machine_id} gave no result for {kind} before it expired at "
                f"{expires_at.isoformat() if expires_at else '?'}; a late result is ignored"
            )
            body = Result(command_id=command_id, ok=False, error=reason).model_dump(mode="json")
            progress = (result or {}).get("progress")
            if progress:
                body["progress"] = progress  # keep how far it got
            outcome: Any = session.execute(
                update(CommandRecord)
                .where(CommandRecord.id == command_id, CommandRecord.state.in_(OPEN_STATES))
                .values(state="expired", result=body, completed_at=now)
            )
            if outcome.rowcount:  # guarded: a result applied meanwhile wins
                expired.append(command_id)
    for command_id in expired:
        log.warning("command %s expired without a result", command_id)
    return expired
