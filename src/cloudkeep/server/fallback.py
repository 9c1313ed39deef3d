"""The fallback channel: commands run over the cloud's own command channel, on a bounded pool.

When a machine's queue is silent the dispatcher hands the signed command to the cloud's channel
(SSM Run Command / Azure Run Command / a local subprocess), which runs ``python -m
cloudkeep.machine exec`` and returns the signed result on its last stdout line. Each such command
blocks a thread while the cloud runs it, so they run on one ``FallbackPool`` per process with a
fixed number of threads: a fleet-wide fallback queues its commands in order instead of starting a
thread each (20,000 machines used to mean 20,000 threads). Every cloud call still goes through
the account's pacer, and a command whose envelope expired while it waited for a thread is failed
without being sent (the machine would refuse it anyway).
"""

from __future__ import annotations

import base64
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import update

from cloudkeep.protocol import MessageValidator, ProtocolError
from cloudkeep.protocol.bodies import Result
from cloudkeep.providers.base import CallPacer, CloudProvider, Machine, Platform, paced
from cloudkeep.server.clock import utcnow
from cloudkeep.server.consumer import OPEN_STATES, apply_report
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import CommandRecord
from cloudkeep.server.logs import event

log = logging.getLogger(__name__)
MAX_FALLBACK_TIMEOUT = 48 * 3600.0


def linux_fallback_script(message: str) -> str:
    """Shell script for the command channel: run ``exec`` with the installed interpreter."""
    b64 = base64.b64encode(message.encode()).decode()
    return (
        'ROOT="${CLOUDKEEP_MACHINE_ROOT:-}"\n'
        'PY="${CLOUDKEEP_PYTHON:-$ROOT/opt/cloudkeep/venv/bin/python}"\n'
        '[ -x "$PY" ] || PY=python3\n'
        f'exec "$PY" -m cloudkeep.machine exec --config "$ROOT/etc/cloudkeep/machine.json" --message {b64}\n'
    )


def windows_fallback_script(message: str) -> str:
    b64 = base64.b64encode(message.encode()).decode()
    return (
        "$py = if ($env:CLOUDKEEP_PYTHON) { $env:CLOUDKEEP_PYTHON } "
        "else { Join-Path $env:ProgramFiles 'cloudkeep\\venv\\Scripts\\python.exe' }\n"
        "$cfg = Join-Path $env:ProgramData 'cloudkeep\\machine.json'\n"
        f"& $py -m cloudkeep.machine exec --config $cfg --message {b64}\n"
        "exit $LASTEXITCODE\n"
    )


class FallbackPool:
    """At most ``workers`` daemon threads, started as commands arrive; the rest wait in order.

    Daemon threads: a fallback may run for hours (a backup), and a process exit must not wait for it.
    ``resize`` follows a changed ``parallel_machines``: more threads start for commands already
    waiting; surplus threads leave once their current command ends (a running one is never cut).
    """

    def __init__(self, workers: int) -> None:
        _check_workers(workers)
        self.workers = workers
        self._cond = threading.Condition()
        self._jobs: deque[Callable[[], None]] = deque()
        self._threads: set[threading.Thread] = set()
        self._idle = 0  # threads waiting for a job
        self._started = 0  # names the threads
        self.busy = 0
        self.peak_busy = 0  # the most commands that ran at once (metrics, tests)

    @property
    def threads(self) -> int:
        with self._cond:
            return len(self._threads)

    @property
    def queued(self) -> int:
        """Commands waiting for a thread (the /metrics queue depth)."""
        with self._cond:
            return len(self._jobs)

    def submit(self, job: Callable[[], None]) -> None:
        with self._cond:
            self._jobs.append(job)
            self._grow()
            self._cond.notify()

    def resize(self, workers: int) -> None:
        """Run at most ``workers`` commands at once from now on."""
        _check_workers(workers)
        with self._cond:
            if workers == self.workers:
                return
            self.workers = workers
            self._grow()
            self._cond.notify_all()  # idle surplus threads leave now, busy ones after their command

    def _grow(self) -> None:
        """Start threads for waiting commands that no idle thread will take (lock held)."""
        while len(self._jobs) > self._idle and len(self._threads) < self.workers:
            thread = threading.Thread(target=self._work, name=f"ck-fallback-{self._started}", daemon=True)
            self._started += 1
            self._threads.add(thread)
            self._idle += 1  # counted idle until it takes a job, so one command starts one thread
            thread.start()

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while True:
                    if len(self._threads) > self.workers:  # shrunk: leave, the others take the queue
                        self._threads.discard(me)
                        self._idle -= 1
                        self._cond.notify()  # pass on a wake-up this thread may have taken
                        return
                    if self._jobs:
                        break
                    self._cond.wait()
                self._idle -= 1
                job = self._jobs.popleft()
                self.busy += 1
                self.peak_busy = max(self.peak_busy, self.busy)
            try:
                job()
            except Exception:  # a job records its own failure; a bug must not kill the worker
                log.exception("a fallback command crashed")
            finally:
                with self._cond:
                    self.busy -= 1
                    self._idle += 1


def _check_workers(workers: int) -> None:
    if workers < 1:
        raise ValueError("a fallback pool needs at least one worker")


_POOL: FallbackPool | None = None
_POOL_LOCK = threading.Lock()


def process_pool(workers: int) -> FallbackPool:
    """This process's pool, sized to ``workers`` (the ``parallel_machines`` of the latest settings
    that asked: a dispatcher built after the setting changed resizes it)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = FallbackPool(workers)
        else:
            _POOL.resize(workers)
        return _POOL


def current_pool() -> FallbackPool | None:
    """This process's pool if a dispatcher created it (read by /metrics, which must not create one)."""
    return _POOL


@dataclass(frozen=True)
class FallbackTarget:
    """What the channel needs to reach a machine (from the catalog)."""

    machine_id: str
    cloud_id: str
    platform: str
    region: str


def fail_command(ctx: ServerContext, command_id: str, error: str) -> None:
    """Close an open command as failed with ``error`` (a result applied meanwhile wins)."""
    body = Result(command_id=command_id, ok=False, error=error).model_dump(mode="json")
    with ctx.db() as session:
        session.execute(
            update(CommandRecord)
            .where(CommandRecord.id == command_id, CommandRecord.state.in_(OPEN_STATES))
            .values(state="failed", result=body, completed_at=utcnow())
        )


def _still_due(ctx: ServerContext, command_id: str, now: datetime) -> bool:
    """Whether a command that waited for a thread should still run: open, and not past its expiry."""
    with ctx.db() as session:
        record = session.get(CommandRecord, command_id)
        if record is None or record.state not in OPEN_STATES:
            return False
        expires = record.expires_at
    if expires is not None and (expires if expires.tzinfo else expires.replace(tzinfo=UTC)) <= now:
        fail_command(
            ctx,
            command_id,
            f"expired at {expires.isoformat()} while waiting for a fallback slot "
            "(the cloud command channel was busy with other machines' commands); not sent",
        )
        return False
    return True


def run_fallback(
    ctx: ServerContext,
    provider: CloudProvider,
    pacer: CallPacer,
    validator: MessageValidator,
    target: FallbackTarget,
    command_id: str,
    text: str,
    ttl: float,
    now: Callable[[], datetime],
) -> None:
    """Run one command over the cloud's channel and apply its signed result. Every cloud call is
    paced (its start a write, its status reads reads), so a fleet falling back at once stays within
    the account's limits: the commands then wait their turn instead of being throttled."""
    if not _still_due(ctx, command_id, now()):
        return
    try:
        machine = Machine(
            id=target.cloud_id, name=target.cloud_id, platform=Platform(target.platform),
            state="unknown", region=target.region,
        )  # fmt: skip
        if not target.region:  # recorded before regions were: ask the inventory (a read)
            found = paced(pacer, "read", "", lambda: provider.inventory.get_machine(target.cloud_id))
            machine = found or machine
        windows = machine.platform == Platform.WINDOWS
        script = windows_fallback_script(text) if windows else linux_fallback_script(text)
        outcome = provider.commands.run(machine, script, timeout=min(ttl, MAX_FALLBACK_TIMEOUT), pacer=pacer)
    except Exception as exc:
        event(log, "fallback_failed", level=logging.WARNING, command=command_id,
              machine=target.machine_id, error=str(exc))  # fmt: skip
        fail_command(ctx, command_id, f"the command channel failed: {exc}")
        return
    lines = [line for line in outcome.stdout.splitlines() if line.strip()]
    try:
        if not lines:
            raise ProtocolError("no output")
        envelope = validator.validate(lines[-1])
        body = envelope.parsed_body()
        if (
            envelope.sender != target.machine_id
            or not isinstance(body, Result)
            or body.command_id != command_id
        ):
            raise ProtocolError("the output is not this command's result")
        apply_report(ctx, envelope)
    except ProtocolError as exc:
        detail = (outcome.stderr.strip() or outcome.stdout.strip())[-800:]
        fail_command(
            ctx,
            command_id,
            f"command channel gave no valid signed result ({exc}; exit {outcome.exit_code}): {detail}",
        )
