"""Results applied in one server process wake the waiters of every process (PostgreSQL NOTIFY).

With the consumers in processes of their own (``--workers N``), the job runner's process never
applies the results it waits for, so ``consumer.RESULTS`` could not wake it and every waiting
task polled its command row every 0.2 s: hundreds of reads a second at fleet scale, and up to a
poll interval added to every round trip. On PostgreSQL the consumer now announces each applied
result in the transaction that applies it (``pg_notify``, delivered on commit), and one listener
thread per process and database turns the notifications into ``RESULTS`` wake-ups; waiters then
read the row only when told, plus a slow safety poll. SQLite has no cross-process wake: there
the in-process signal and the short poll remain.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import text
from sqlalchemy.orm import Session

from cloudkeep.server.context import ServerContext

log = logging.getLogger(__name__)
CHANNEL = "cloudkeep_results"
SAFETY_POLL_SECONDS = 2.0  # a missed notification (listener reconnecting) costs at most this
_NOTIFY = text("SELECT pg_notify(:channel, :command_id)")


def announce(session: Session, command_id: str) -> None:
    """Tell every listening process that ``command_id``'s result is in (on commit; PostgreSQL only)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_NOTIFY, {"channel": CHANNEL, "command_id": command_id})


class ResultListener:
    """A thread holding one PostgreSQL connection in ``LISTEN``; wakes ``consumer.RESULTS`` waiters."""

    def __init__(self, ctx: ServerContext) -> None:
        self.dsn = ctx.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.listening = threading.Event()  # set while LISTEN is in force: waiters may poll slowly
        self.stopping = threading.Event()
        self.woken = 0  # notifications received (for tests and the fleet bench)
        self._thread = threading.Thread(target=self._run, name="ck-result-listener", daemon=True)

    def start(self) -> ResultListener:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        import psycopg  # only servers on PostgreSQL need it

        from cloudkeep.server.consumer import RESULTS

        failures = 0
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    failures = 0
                    while not self.stopping.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self.woken += 1
                            RESULTS.notify(note.payload)
            except Exception as exc:  # the database restarted or the network dropped: reconnect
                failures += 1
                log.warning("result listener: %s; reconnecting (waiters poll meanwhile)", exc)
            finally:
                self.listening.clear()
            self.stopping.wait(min(10.0, 0.2 * 2**failures))


_LISTENERS: dict[str, ResultListener] = {}
_LOCK = threading.Lock()


def listener_for(ctx: ServerContext) -> ResultListener | None:
    """This process's listener on ``ctx``'s database, started on first use; None on SQLite."""
    if ctx.engine.dialect.name != "postgresql":
        return None
    key = ctx.settings.effective_database_url
    with _LOCK:
        listener = _LISTENERS.get(key)
        if listener is None:
            listener = _LISTENERS[key] = ResultListener(ctx).start()
    return listener


def wait_poll(ctx: ServerContext, poll: float) -> float:
    """How often a waiter must re-read its command row: rarely while notifications arrive."""
    listener = listener_for(ctx)
    return max(poll, SAFETY_POLL_SECONDS) if listener is not None and listener.listening.is_set() else poll


def stop_listeners() -> None:
    """Stop every listener this process started (tests, shutdown)."""
    with _LOCK:
        listeners = list(_LISTENERS.values())
        _LISTENERS.clear()
    for listener in listeners:
        listener.stop()
