"""The local queue's receive stays an index walk however many messages wait (issue 18)."""

from __future__ import annotations

import time
from pathlib import Path

from cloudkeep.providers.local.queues import RECEIVE_SQL, LocalQueueService


def _fill(service: LocalQueueService, queue: str, count: int, *, visible_at: float) -> None:
    db = service.database._connection()
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO messages (id, queue, body, sent_at, visible_at) VALUES (?, ?, ?, ?, ?)",
        ((f"{queue}-{n}", queue, f"body {n}", visible_at, visible_at) for n in range(count)),
    )
    db.execute("COMMIT")


def test_receive_walks_the_send_order_index_without_sorting(tmp_path: Path) -> None:
    service = LocalQueueService(tmp_path / "queues.db")
    service.ensure_queue("server")
    _fill(service, "server", 2_000, visible_at=0.0)
    db = service.database._connection()
    db.execute("ANALYZE")  # statistics must not talk the planner into the (queue, visible_at) index
    plan = " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + RECEIVE_SQL, ("server", 1.0, 20)))
    assert "messages_order" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


def test_receive_order_and_visibility_with_many_waiting(tmp_path: Path) -> None:
    service = LocalQueueService(tmp_path / "queues.db")
    queue = service.ensure_queue("server")
    service.ensure_queue("other")
    _fill(service, "other", 5_000, visible_at=0.0)  # another queue's messages are never returned
    _fill(service, "server", 20_000, visible_at=0.0)
    first = queue.receive(max_messages=10, visibility_timeout=600)
    assert [m.message_id for m in first] == [f"server-{n}" for n in range(10)]
    second = queue.receive(max_messages=10, visibility_timeout=600)  # the first ten are in flight
    assert [m.message_id for m in second] == [f"server-{n}" for n in range(10, 20)]
    queue.ack_many(first)
    db = service.database._connection()
    db.execute("UPDATE messages SET visible_at = ? WHERE id = 'server-20'", (time.time() + 600,))
    third = queue.receive(max_messages=3, visibility_timeout=600)  # a delayed message is skipped
    assert [m.message_id for m in third] == ["server-21", "server-22", "server-23"]
    assert queue.approximate_count() == 20_000 - 10
