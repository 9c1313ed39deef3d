"""The Cloud Message Service: the machine's one link to the backup server.

It long-polls the machine's own queue, validates every message (signature by the server's key,
recipient, expiry, size, schema), records it in the idempotency ledger *before* acknowledging
it, then runs ``ping`` / ``run_script`` itself or hands the command to the Agent or Transport
Service through their spools. Results and progress go to the server queue, each signed with
the agent key; heartbeats go every ``heartbeat_seconds``. Invalid messages are dead-lettered
and logged, never executed. A redelivered message (same id) is never run again: its stored
result is re-posted. Queue outages are ridden out with back-off; nothing is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from cloudkeep.machine.config import MachineConfig
from cloudkeep.machine.keys import AGENT_LEVEL, AgentKeys
from cloudkeep.machine.ledger import CommandLedger
from cloudkeep.machine.link import QueueLink, QueueUnavailable, backoff
from cloudkeep.machine.services import BEACON_SECONDS, service_status, touch_beacon
from cloudkeep.machine.spool import Spool
from cloudkeep.protocol.crypto import load_verify_key
from cloudkeep.protocol.errors import ProtocolError
from cloudkeep.protocol.reports import MAX_TTL, report_fields, sign_fields
from cloudkeep.providers.registry import provider_facts, provider_kinds

if TYPE_CHECKING:
    from cloudkeep.protocol import Envelope, MessageValidator

# pydantic and the body models (``handlers``, ``protocol.envelope`` / ``bodies``) are imported on the
# first message, not at start: an idle service only signs heartbeats (``protocol.reports``) and
# keeps ~10 MB less (issue 14). Every message received is still fully validated before it is acted on.

log = logging.getLogger(__name__)
RELAY_INTERVAL = 0.2
LEDGER_RETENTION = MAX_TTL.total_seconds() * 2


def command_validator(config: MachineConfig) -> MessageValidator:
    """Accept only commands addressed to this machine and signed by this machine's server."""
    from cloudkeep.protocol.bodies import COMMAND_BODIES
    from cloudkeep.protocol.envelope import MessageValidator

    server_key = load_verify_key(config.server_public_key)
    return MessageValidator(
        me=config.machine_id,
        sender_key=lambda sender: server_key if sender == config.server_id else None,
        clock_skew=config.clock_skew_seconds,
        kinds=frozenset(COMMAND_BODIES),
    )


class MessageService:
    def __init__(
        self,
        config: MachineConfig,
        *,
        receive_wait: float | None = None,
        visibility_timeout: int = 120,
        workers: int = 4,
    ) -> None:
        self.config = config
        self.keys = AgentKeys.load(config.state_dir)
        self.ledger = CommandLedger(config.state_dir / "commands.db")
        self._validator: MessageValidator | None = None
        self.inbound = QueueLink(config.agent_queue)
        self.outbound = QueueLink(config.server_queue)
        self.spools = {name: Spool.for_service(config.state_dir, name) for name in ("agent", "transport")}
        self.receive_wait = config.receive_wait_seconds if receive_wait is None else receive_wait
        kind = str(config.agent_queue.get("kind"))
        cap = provider_facts(kind).machine_queue_wait_cap if kind in provider_kinds() else None
        if cap is not None:  # polled queues where a poll is cheap: short waits keep commands snappy
            self.receive_wait = min(self.receive_wait, cap)
        self.visibility_timeout = visibility_timeout
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="ck-command")
        self.stopping = threading.Event()
        self._progress_seen: dict[str, float] = {}
        self._post_lock = threading.Lock()

    @property
    def validator(self) -> MessageValidator:
        if self._validator is None:  # only the receive loop (and recover, before it) validates
            self._validator = command_validator(self.config)
        return self._validator

    # --- lifecycle ------------------------------------------------------------------------------

    def run(self) -> None:
        touch_beacon(self.config.state_dir, self.config.run_dir, "message-service")
        self.recover()
        threads = [
            threading.Thread(
                target=self._loop, args=(self.relay_once, RELAY_INTERVAL), name="ck-relay", daemon=True
            ),
            threading.Thread(target=self._heartbeat_loop, name="ck-heartbeat", daemon=True),
        ]
        for thread in threads:
            thread.start()
        log.info("message service for %s started", self.config.machine_id)
        self._receive_loop()
        self.pool.shutdown(wait=True)
        self.relay_once()
        log.info("message service stopped")

    def stop(self) -> None:
        self.stopping.set()

    def recover(self) -> None:
        """After a restart: finish what the ledger says was in flight, never running anything twice."""
        interrupted = self.ledger.in_state("started")  # read first: the loop below starts others
        accepted = self.ledger.in_state("accepted")
        if not interrupted and not accepted:
            return
        from cloudkeep.machine.handlers import failure, sign_result
        from cloudkeep.protocol.envelope import Envelope

        for entry in interrupted:
            if entry.route == "exec":
                continue  # run by a fallback `exec` process, which returns its result on stdout
            spool = self.spools.get(entry.route)
            if spool is not None and spool.is_submitted(entry.id):
                continue  # the worker has it; its result will come through the spool
            reason = "the machine's message service restarted while running this command; not re-run"
            self.ledger.complete(entry.id, sign_result(self.config, self.keys, failure(entry.id, reason)))
            log.warning("command %s (%s) interrupted by a restart; reported as failed", entry.id, entry.kind)
        for entry in accepted:  # recorded but never started: safe to start now
            self.dispatch(Envelope.model_validate_json(entry.envelope), entry.envelope)

    def _loop(self, step: Any, interval: float) -> None:
        while not self.stopping.is_set():
            try:
                step()
            except Exception:
                log.exception("background step %s failed", getattr(step, "__name__", step))
            self.stopping.wait(interval)

    # --- inbound --------------------------------------------------------------------------------

    def _receive_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                messages = self.inbound.receive(
                    max_messages=10,
                    visibility_timeout=self.visibility_timeout,
                    wait_seconds=self.receive_wait,
                )
            except QueueUnavailable:
                self.stopping.wait(backoff(self.inbound.failures))
                continue
            for message in messages:
                try:
                    self.handle(message.body, message)
                except QueueUnavailable:
                    pass  # not acknowledged: it comes back and the ledger recognises it
                except Exception:
                    log.exception("unexpected error handling message %s", message.message_id)

    def handle(self, text: str, message: Any) -> str:
        """Validate, record, acknowledge, dispatch. Returns what happened (for logs and tests)."""
        try:
            envelope = self.validator.validate(text)
        except ProtocolError as exc:
            log.warning("rejected message %s: %s: %s", message.message_id, exc.reason, exc)
            self.inbound.dead_letter(message, f"{exc.reason}: {exc}")
            return exc.reason
        from cloudkeep.machine.handlers import ROUTES

        route = ROUTES[envelope.kind]
        if not self.ledger.accept(envelope.id, envelope.kind, route, text):
            entry = self.ledger.get(envelope.id)
            if entry is not None and entry.state == "done":
                self.ledger.mark_posted(envelope.id, False)  # re-post the stored result, never re-run
            elif entry is not None and entry.state == "accepted":
                self.dispatch(envelope, entry.envelope)  # recorded, then the service died: start it once
            log.info("command %s (%s) delivered again; not re-run", envelope.id, envelope.kind)
            self._ack(message)
            return "duplicate"
        self._ack(message)  # recorded durably first: a failed ack only means a recognised redelivery
        self.dispatch(envelope, text)
        return "accepted"

    def _ack(self, message: Any) -> None:
        # On failure it comes back after its visibility timeout and the ledger recognises it.
        with contextlib.suppress(QueueUnavailable):
            self.inbound.ack(message)

    def dispatch(self, envelope: Envelope, text: str) -> None:
        if not self.ledger.start(envelope.id):
            return
        from cloudkeep.machine.handlers import ROUTES

        route = ROUTES[envelope.kind]
        log.info("command %s (%s) → %s", envelope.id, envelope.kind, route)
        if route == "self":
            self.pool.submit(self._run_here, envelope)
        elif route == "control":
            self._forward_control(envelope, text)
        else:
            self.spools[route].submit(envelope.id, text)

    def _run_here(self, envelope: Envelope) -> None:
        from cloudkeep.machine.handlers import TaskContext, execute, sign_result

        result = execute(TaskContext(self.config, self.keys, envelope))
        self.ledger.complete(envelope.id, sign_result(self.config, self.keys, result))
        self.post_results()

    def _forward_control(self, envelope: Envelope, text: str) -> None:
        from cloudkeep.machine.handlers import sign_result
        from cloudkeep.protocol.bodies import Cancel, DeliveredResult, UpdateCredentials

        body = envelope.parsed_body()
        if isinstance(body, Cancel):
            # Every spool gets it: the worker running (or about to claim) the command stops at its next
            # boundary and reports ``cancelled``; a command already finished is unaffected.
            for spool in self.spools.values():
                spool.send_cancel(body.command_id, text)
            target = self.ledger.get(body.command_id)
            state = target.state if target is not None else "unknown"
            delivered = DeliveredResult(delivered_to=body.command_id, target_state=state)
            result = {"command_id": envelope.id, "ok": True, "payload": delivered.model_dump(mode="json")}
            self.ledger.complete(envelope.id, sign_result(self.config, self.keys, result))
            return
        assert isinstance(body, UpdateCredentials)
        envelope.repository(self.keys.encryption)  # refuse credentials we cannot open before forwarding
        for spool in self.spools.values():
            spool.send_control(body.command_id, text)
        forwarded = DeliveredResult(delivered_to=body.command_id).model_dump(mode="json")
        result = {"command_id": envelope.id, "ok": True, "payload": forwarded}
        self.ledger.complete(envelope.id, sign_result(self.config, self.keys, result))

    # --- outbound -------------------------------------------------------------------------------

    def relay_once(self) -> None:
        """Move worker results into the ledger, post progress and every unposted result."""
        for spool in self.spools.values():
            for command_id, result in spool.results():
                from cloudkeep.machine.handlers import sign_result  # a worker reported: pydantic is due

                self.ledger.complete(
                    command_id, sign_result(self.config, self.keys, {**result, "command_id": command_id})
                )
                spool.forget(command_id)
                self._progress_seen.pop(command_id, None)
            for command_id, data, mtime in spool.progress():
                if self._progress_seen.get(command_id) == mtime:
                    continue
                from cloudkeep.machine.handlers import progress_body, sign_report

                text = sign_report(self.config, self.keys, "progress", progress_body(command_id, data),
                                   correlation_id=command_id)  # fmt: skip
                try:
                    self.outbound.send(text)
                except QueueUnavailable:
                    break  # progress is best effort; the next one supersedes it
                self._progress_seen[command_id] = mtime
        self.post_results()

    def post_results(self) -> int:
        posted = 0
        with self._post_lock:
            for entry in self.ledger.unposted():
                assert entry.result is not None
                try:
                    self.outbound.send(entry.result)
                except QueueUnavailable:
                    break  # kept unposted: retried on the next pass
                self.ledger.mark_posted(entry.id)
                posted += 1
        return posted

    def _heartbeat_loop(self) -> None:
        last_beat = 0.0
        last_prune = time.monotonic()
        while not self.stopping.is_set():
            touch_beacon(self.config.state_dir, self.config.run_dir, "message-service")
            now = time.monotonic()
            if now - last_beat >= self.config.heartbeat_seconds:
                try:
                    self.outbound.send(self.heartbeat())
                    last_beat = now
                except QueueUnavailable:
                    pass
            if now - last_prune > 3600:
                self.ledger.prune(LEDGER_RETENTION)
                last_prune = now
            self.stopping.wait(min(BEACON_SECONDS, self.config.heartbeat_seconds))

    def heartbeat(self) -> str:
        """A signed ``heartbeat`` (a ``Heartbeat`` body), built without pydantic (``protocol.reports``)."""
        body = {"services": service_status(self.config.state_dir), "version": self.config.version(),
                "agent_level": AGENT_LEVEL}  # fmt: skip
        ttl = max(60.0, 3 * self.config.heartbeat_seconds)
        fields = report_fields(
            "heartbeat", body, sender=self.config.machine_id, recipient=self.config.server_id, ttl=ttl
        )
        return sign_fields(fields, self.keys.signing)[0]
