"""An embedded durable queue in SQLite (WAL), safe across processes.

Semantics follow SQS so the same conformance suite passes everywhere: a received message is
hidden for its visibility timeout, then delivered again with a higher receive count; after
``max_receive_count`` receives it moves to the dead-letter queue ``<name>-dlq`` (a queue in the
same database, with the reason recorded). Receives take a write lock (``BEGIN IMMEDIATE``), so
two competing consumers never get the same delivery.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from cloudkeep.compat import UTC
from cloudkeep.errors import ConfigurationError, NotFoundError
from cloudkeep.providers.base import (
    Queue,
    QueueAccess,
    QueueService,
    ReceivedMessage,
    dead_letter_queue_name,
)
from cloudkeep.providers.queues import poll_with_backoff

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    max_receive_count INTEGER NOT NULL,
    dead_letter_queue TEXT
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    dead_letter_reason TEXT
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at, seq);
CREATE INDEX IF NOT EXISTS messages_order ON messages (queue, seq);
"""
# The receive walks a queue in send order and stops after a batch. On ``messages_ready`` SQLite had to
# read every visible message and sort them (a temporary B-tree: ~15 ms a receive with 100k waiting),
# so the receive is pinned to the index whose order is the ORDER BY.
RECEIVE_SQL = (
    "SELECT id, body, sent_at, receive_count FROM messages INDEXED BY messages_order "
    "WHERE queue = ? AND visible_at <= ? ORDER BY seq LIMIT ?"
)


class QueueDatabase:
    """One SQLite file holding many queues.

    Each thread keeps its own connection (reopened after a fork): closing the last connection to
    a WAL database checkpoints and fsyncs, which made connect-per-call ~20 ms an operation.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db, self._local.pid = db, os.getpid()
        return db

    @contextmanager
    def connect(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        if not write:
            yield db
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


class LocalQueue(Queue):
    """Accepts bodies up to 256 KiB like classic SQS; callers should still keep messages under 64 KiB."""

    max_message_bytes = 256 * 1024

    def __init__(self, database: QueueDatabase, name: str) -> None:
        self.database = database
        self.name = name

    def send(self, body: str, *, delay_seconds: int = 0) -> str:
        if len(body.encode()) > self.max_message_bytes:
            raise ConfigurationError(
                f"message of {len(body.encode())} bytes exceeds the {self.max_message_bytes}-byte limit",
                hint="send large payloads by reference (store them and send the key)",
            )
        message_id = uuid.uuid4().hex
        now = time.time()
        with self.database.connect(write=True) as db:
            self._require(db)
            db.execute(
                "INSERT INTO messages (id, queue, body, sent_at, visible_at) VALUES (?, ?, ?, ?, ?)",
                (message_id, self.name, body, now, now + delay_seconds),
            )
        return message_id

    def _require(self, db: sqlite3.Connection) -> tuple[int, str | None]:
        row = db.execute(
            "SELECT max_receive_count, dead_letter_queue FROM queues WHERE name = ?", (self.name,)
        ).fetchone()
        if row is None:
            raise NotFoundError(
                f"local queue {self.name!r} does not exist", hint="create it with ensure_queue"
            )
        return int(row[0]), row[1]

    def _receive_once(self, max_messages: int, visibility_timeout: int) -> list[ReceivedMessage]:
        received: list[ReceivedMessage] = []
        now = time.time()
        with self.database.connect() as db:  # a read (WAL: takes no lock) before the write lock
            self._require(db)
            visible = db.execute(
                "SELECT 1 FROM messages WHERE queue = ? AND visible_at <= ? LIMIT 1", (self.name, now)
            ).fetchone()
        if visible is None:
            # Thousands of idle queues polled in one database (a fleet on one host, the fleet
            # simulator) each took the write lock for nothing and starved the senders.
            return received
        with self.database.connect(write=True) as db:
            max_receives, dlq = self._require(db)
            rows = db.execute(RECEIVE_SQL, (self.name, now, max_messages * 2)).fetchall()
            for message_id, body, sent_at, count in rows:
                if dlq and count >= max_receives:  # like an SQS redrive policy
                    db.execute(
                        "UPDATE messages SET queue = ?, visible_at = ?, receipt = NULL, receive_count = 0, "
                        "dead_letter_reason = ? WHERE id = ?",
                        (dlq, now, f"received {count} times without being acknowledged", message_id),
                    )
                    continue
                if len(received) >= max_messages:
                    break
                receipt = uuid.uuid4().hex
                db.execute(
                    "UPDATE messages SET visible_at = ?, receive_count = ?, receipt = ? WHERE id = ?",
                    (now + visibility_timeout, count + 1, receipt, message_id),
                )
                received.append(
                    ReceivedMessage(
                        body=body, receipt=f"{message_id}:{receipt}", message_id=message_id,
                        receive_count=count + 1, sent_at=datetime.fromtimestamp(sent_at, UTC),
                    )
                )  # fmt: skip
        return received

    def receive(
        self, *, max_messages: int = 10, visibility_timeout: int = 30, wait_seconds: float = 0.0
    ) -> list[ReceivedMessage]:
        return poll_with_backoff(lambda: self._receive_once(max_messages, visibility_timeout), wait_seconds)

    def ack(self, message: ReceivedMessage) -> None:
        message_id, _, receipt = message.receipt.partition(":")
        with self.database.connect(write=True) as db:
            db.execute("DELETE FROM messages WHERE id = ? AND receipt = ?", (message_id, receipt))

    def ack_many(self, messages: list[ReceivedMessage]) -> None:
        """One write transaction for the lot (the server acks heartbeats by the hundred)."""
        pairs = [message.receipt.partition(":")[::2] for message in messages]
        with self.database.connect(write=True) as db:
            db.executemany("DELETE FROM messages WHERE id = ? AND receipt = ?", pairs)

    def extend_visibility(self, message: ReceivedMessage, seconds: int) -> None:
        message_id, _, receipt = message.receipt.partition(":")
        with self.database.connect(write=True) as db:
            db.execute(
                "UPDATE messages SET visible_at = ? WHERE id = ? AND receipt = ?",
                (time.time() + seconds, message_id, receipt),
            )

    def dead_letter(self, message: ReceivedMessage, reason: str) -> None:
        message_id, _, receipt = message.receipt.partition(":")
        with self.database.connect(write=True) as db:
            _, dlq = self._require(db)
            db.execute(
                "UPDATE messages SET queue = ?, visible_at = ?, receipt = NULL, receive_count = 0, "
                "dead_letter_reason = ? WHERE id = ? AND receipt = ?",
                (dlq or dead_letter_queue_name(self.name), time.time(), reason, message_id, receipt),
            )

    def approximate_count(self) -> int:
        with self.database.connect() as db:
            row = db.execute("SELECT COUNT(*) FROM messages WHERE queue = ?", (self.name,)).fetchone()
        return int(row[0])

    def dead_letter_reason(self, message_id: str) -> str | None:
        """Why a message ended up here (only for messages in a dead-letter queue)."""
        with self.database.connect() as db:
            row = db.execute("SELECT dead_letter_reason FROM messages WHERE id = ?", (message_id,)).fetchone()
        return None if row is None else row[0]


class LocalQueueService(QueueService):
    def __init__(self, database_path: Path | str) -> None:
        self.database = QueueDatabase(database_path)

    def ensure_queue(self, name: str, *, max_receive_count: int = 5) -> LocalQueue:
        dlq = dead_letter_queue_name(name)
        with self.database.connect(write=True) as db:
            db.execute("INSERT OR IGNORE INTO queues (name, max_receive_count) VALUES (?, 0)", (dlq,))
            db.execute(
                "INSERT INTO queues (name, max_receive_count, dead_letter_queue) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET max_receive_count = excluded.max_receive_count, "
                "dead_letter_queue = excluded.dead_letter_queue",
                (name, max_receive_count, dlq),
            )
        return LocalQueue(self.database, name)

    def get_queue(self, name: str) -> LocalQueue:
        queue = LocalQueue(self.database, name)
        with self.database.connect() as db:
            queue._require(db)
        return queue

    def delete_queue(self, name: str) -> None:
        with self.database.connect(write=True) as db:
            for queue in (name, dead_letter_queue_name(name)):
                db.execute("DELETE FROM messages WHERE queue = ?", (queue,))
                db.execute("DELETE FROM queues WHERE name = ?", (queue,))

    def connection_info(self, name: str, *, access: QueueAccess = "consume") -> dict[str, Any]:
        """The SQLite file and queue name. ``access`` is accepted but not enforced: simulated machines
        share one file with the server, so there is no access control (a lab, not a boundary)."""
        self.get_queue(name)
        return {"kind": "local", "name": name, "database": str(self.database.path.resolve())}


def open_local_queue(info: Mapping[str, Any]) -> Queue:
    return LocalQueueService(info["database"]).get_queue(str(info["name"]))
