"""The Agent and the Transport Service share one worker loop over their spool.

Each claims commands from its spool (atomic rename: a command is claimed once), runs them with
the shared handlers on a few threads, and writes progress and the result back to the spool for
the message service to sign and post. After a crash, a claimed command without a result is
reported as interrupted, never run again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from cloudkeep.machine.config import MachineConfig
from cloudkeep.machine.keys import AgentKeys, read_raw
from cloudkeep.machine.services import BEACON_SECONDS, touch_beacon
from cloudkeep.machine.spool import Spool
from cloudkeep.protocol.errors import ProtocolError

if TYPE_CHECKING:
    from cloudkeep.protocol import MessageValidator, RepositoryAccess

log = logging.getLogger(__name__)


class TaskWorker:
    def __init__(self, config: MachineConfig, service: str, *, parallel: int = 2, poll: float = 0.2) -> None:
        self.config = config
        self.service = service
        read_raw(config.state_dir)  # a missing or broken key fails the start, not the first command
        self._keys: AgentKeys | None = None
        self.spool = Spool.for_service(config.state_dir, service)
        self._validator: MessageValidator | None = None
        self._validator_lock = threading.Lock()
        self.parallel = threading.Semaphore(parallel)
        self.poll = poll
        self.stopping = threading.Event()
        self.running: set[str] = set()

    @property
    def keys(self) -> AgentKeys:
        """Built at the first command, like the validator: ``cryptography`` is a quarter of an idle
        worker's memory otherwise."""
        with self._validator_lock:
            if self._keys is None:
                self._keys = AgentKeys.load(self.config.state_dir)
            return self._keys

    @property
    def validator(self) -> MessageValidator:
        """Built at the first command: the handlers, the engine and pydantic's body models load
        then, so an idle worker stays a small process."""
        with self._validator_lock:  # one validator: its replay memory must see every command
            if self._validator is None:
                from cloudkeep.machine.message_service import command_validator

                self._validator = command_validator(self.config)
            return self._validator

    def stop(self) -> None:
        self.stopping.set()

    def recover(self) -> None:
        for command_id in self.spool.claimed():
            if command_id not in self.running and not self.spool.result_path(command_id).exists():
                from cloudkeep.machine.handlers import failure

                reason = f"the {self.service} restarted while running this command; not re-run (at most once)"
                self.spool.write_result(command_id, failure(command_id, reason))
                log.warning("command %s was interrupted by a %s restart", command_id, self.service)

    def run(self) -> None:
        self.recover()
        log.info("%s for %s started", self.service, self.config.machine_id)
        last_beacon = 0.0
        threads: list[threading.Thread] = []
        while not self.stopping.is_set():
            now = time.monotonic()
            if now - last_beacon >= BEACON_SECONDS:
                touch_beacon(self.config.state_dir, self.config.run_dir, self.service)
                last_beacon = now
            if not self.parallel.acquire(timeout=self.poll):
                continue
            claimed = self.spool.claim_next()
            if claimed is None:
                self.parallel.release()
                self.stopping.wait(self.poll)
                continue
            thread = threading.Thread(
                target=self._run_task, args=claimed, name=f"ck-{claimed[0][:8]}", daemon=True
            )
            self.running.add(claimed[0])
            thread.start()
            threads = [t for t in threads if t.is_alive()] + [thread]
        for thread in threads:
            thread.join()

    def _run_task(self, command_id: str, text: str) -> None:
        from cloudkeep.machine.handlers import TaskContext, cancelled_result, execute, failure

        try:
            try:
                envelope = self.validator.validate(text, check_time=False)
            except ProtocolError as exc:
                self.spool.write_result(
                    command_id, failure(command_id, f"refused by the {self.service}: {exc}")
                )
                return
            if self.spool.cancel_requested(command_id):  # cancelled before it started: never run it
                self.spool.write_result(command_id, cancelled_result(command_id))
                return
            ctx = TaskContext(
                self.config, self.keys, envelope,
                progress=lambda data: self.spool.write_progress(command_id, data),
                refreshed_access=self._credentials_watcher(command_id),
                cancelled=lambda: self.spool.cancel_requested(command_id),
            )  # fmt: skip
            self.spool.write_result(command_id, execute(ctx))
        finally:
            self.running.discard(command_id)
            self.parallel.release()

    def _credentials_watcher(self, command_id: str) -> Any:
        """Return a callable giving the newest repository access sent by ``update_credentials``."""
        state: dict[str, Any] = {"mtime": None, "access": None}

        def latest() -> RepositoryAccess | None:
            found = self.spool.control_for(command_id)
            if found is None or found[1] == state["mtime"]:
                return state["access"]
            text, mtime = found
            state["mtime"] = mtime
            try:
                envelope = self.validator.validate(text, check_time=False)
                state["access"] = envelope.repository(self.keys.encryption)
                log.info("command %s: repository credentials refreshed", command_id)
            except ProtocolError as exc:
                log.warning("command %s: ignoring credential update: %s", command_id, exc)
            return state["access"]

        return latest
