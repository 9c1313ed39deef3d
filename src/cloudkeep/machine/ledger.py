"""The machine's idempotency store: every command id it ever accepted, its state and its signed result.

SQLite in the state dir, shared by the message service, the fallback ``exec`` path and restarts.
A command moves ``accepted → started → done`` and the transition to ``started`` happens exactly
once (conditional UPDATE), so a redelivered or replayed message is recognised and never re-run:
its stored result is re-posted instead. Rows outlive the longest message lifetime, so an id is
never forgotten while a copy of its message could still be valid.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    route TEXT NOT NULL,
    state TEXT NOT NULL,
    envelope TEXT NOT NULL,
    result TEXT,
    posted INTEGER NOT NULL DEFAULT 0,
    received_at REAL NOT NULL,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS commands_unposted ON commands (state, posted);
"""


@dataclass(frozen=True)
class LedgerEntry:
    id: str
    kind: str
    route: str
    state: str  # accepted / started / done
    envelope: str
    result: str | None
    posted: bool


class CommandLedger:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    def accept(self, command_id: str, kind: str, route: str, envelope: str) -> bool:
        """Record a new command durably; False if the id was seen before (redelivery or replay)."""
        with self._connect() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO commands (id, kind, route, state, envelope, received_at) "
                "VALUES (?, ?, ?, 'accepted', ?, ?)",
                (command_id, kind, route, envelope, time.time()),
            )
            return cursor.rowcount == 1

    def start(self, command_id: str) -> bool:
        """The at-most-once gate: True for exactly one caller, ever."""
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE commands SET state = 'started' WHERE id = ? AND state = 'accepted'", (command_id,)
            )
            return cursor.rowcount == 1

    def complete(self, command_id: str, result: str, *, posted: bool = False) -> bool:
        """Store the signed result once; later completions (a duplicate relay) are ignored."""
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE commands SET state = 'done', result = ?, posted = ?, done_at = ? "
                "WHERE id = ? AND state != 'done'",
                (result, int(posted), time.time(), command_id),
            )
            return cursor.rowcount == 1

    def mark_posted(self, command_id: str, posted: bool = True) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE commands SET posted = ? WHERE id = ? AND state = 'done'", (int(posted), command_id)
            )

    def get(self, command_id: str) -> LedgerEntry | None:
        rows = self._select("WHERE id = ?", (command_id,))
        return rows[0] if rows else None

    def unposted(self, limit: int = 100) -> list[LedgerEntry]:
        return self._select("WHERE state = 'done' AND posted = 0 ORDER BY done_at LIMIT ?", (limit,))

    def in_state(self, state: str) -> list[LedgerEntry]:
        return self._select("WHERE state = ? ORDER BY received_at", (state,))

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            return {s: n for s, n in db.execute("SELECT state, COUNT(*) FROM commands GROUP BY state")}

    def prune(self, older_than_seconds: float) -> int:
        """Forget finished commands older than every message that could still carry their id."""
        with self._connect() as db:
            cursor = db.execute(
                "DELETE FROM commands WHERE state = 'done' AND posted = 1 AND received_at < ?",
                (time.time() - older_than_seconds,),
            )
            return cursor.rowcount

    def _select(self, where: str, args: tuple[object, ...]) -> list[LedgerEntry]:
        with self._connect() as db:
            rows = db.execute(
                f"SELECT id, kind, route, state, envelope, result, posted FROM commands {where}", args
            ).fetchall()
        return [LedgerEntry(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows]
