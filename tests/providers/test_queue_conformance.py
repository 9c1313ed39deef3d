"""One conformance suite for every queue: local SQLite, SQS on moto server, Azure Queue on Azurite."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Callable

from cloudkeep.providers.base import QueueService, ReceivedMessage, dead_letter_queue_name
from cloudkeep.providers.queues import open_queue_from_info


def poll(fn: Callable[[], list[ReceivedMessage]], *, timeout: float = 15.0) -> list[ReceivedMessage]:
    """Call ``fn`` until it returns messages or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = fn()
        if found:
            return found
        time.sleep(0.1)
    return []


def test_send_receive_ack(queue_service: QueueService, unique_name: str) -> None:
    queue = queue_service.ensure_queue(unique_name)
    assert queue_service.ensure_queue(unique_name).name == unique_name  # idempotent
    sent = {queue.send(f"message {i}") for i in range(3)}
    got: list[ReceivedMessage] = []
    deadline = time.monotonic() + 10
    while len(got) < 3 and time.monotonic() < deadline:
        got += queue.receive(max_messages=10, visibility_timeout=30, wait_seconds=1)
    assert sorted(m.body for m in got) == ["message 0", "message 1", "message 2"]
    assert {m.message_id for m in got} == sent
    assert all(m.receive_count == 1 for m in got)
    for message in got:
        queue.ack(message)
    assert queue.receive(wait_seconds=0) == []
    assert queue.approximate_count() == 0


def test_ack_many_deletes_a_batch_beyond_ten(queue_service: QueueService, unique_name: str) -> None:
    queue = queue_service.ensure_queue(unique_name)
    for i in range(13):  # more than one SQS DeleteMessageBatch (10 entries)
        queue.send(f"m{i}")
    got: list[ReceivedMessage] = []
    deadline = time.monotonic() + 10
    while len(got) < 13 and time.monotonic() < deadline:
        got += queue.receive(max_messages=10, visibility_timeout=30, wait_seconds=1)
    assert len(got) == 13
    queue.ack_many(got[:12])
    queue.ack_many([])
    assert queue.approximate_count() == 1
    queue.ack_many(got[12:])
    assert queue.receive(wait_seconds=0) == []
    assert queue.approximate_count() == 0


def test_visibility_timeout_redelivers_with_higher_receive_count(
    queue_service: QueueService, unique_name: str
) -> None:
    queue = queue_service.ensure_queue(unique_name)
    queue.send("redeliver me")
    first = poll(lambda: queue.receive(visibility_timeout=3))
    assert [m.body for m in first] == ["redeliver me"]
    assert queue.receive(visibility_timeout=3) == []  # hidden while in flight
    again = poll(lambda: queue.receive(visibility_timeout=30))
    assert [m.body for m in again] == ["redeliver me"]
    assert again[0].receive_count == 2
    queue.ack(again[0])


def test_extend_visibility_keeps_message_hidden(queue_service: QueueService, unique_name: str) -> None:
    queue = queue_service.ensure_queue(unique_name)
    queue.send("busy")
    [message] = poll(lambda: queue.receive(visibility_timeout=3))
    queue.extend_visibility(message, 30)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        assert queue.receive(visibility_timeout=1) == []
        time.sleep(0.2)


def test_unacked_message_moves_to_dead_letter_queue(queue_service: QueueService, unique_name: str) -> None:
    queue = queue_service.ensure_queue(unique_name, max_receive_count=1)
    queue.send("poison")
    assert [m.body for m in poll(lambda: queue.receive(visibility_timeout=1))] == ["poison"]
    dlq = queue_service.get_queue(dead_letter_queue_name(unique_name))
    dead = poll(lambda: queue.receive(visibility_timeout=1) + dlq.receive(visibility_timeout=30))
    assert [m.body for m in dead] == ["poison"]
    assert queue.receive() == []


def test_explicit_dead_letter(queue_service: QueueService, unique_name: str) -> None:
    queue = queue_service.ensure_queue(unique_name)
    queue.send("unsigned")
    [message] = poll(lambda: queue.receive(visibility_timeout=30))
    queue.dead_letter(message, "signature missing")
    dlq = queue_service.get_queue(dead_letter_queue_name(unique_name))
    assert [m.body for m in poll(lambda: dlq.receive())] == ["unsigned"]
    assert queue.approximate_count() == 0  # moved, not copied


def test_large_payload_round_trips(queue_service: QueueService, unique_name: str) -> None:
    """100 KiB: above Azure's 64 KiB message limit (sent by reference there), within SQS's 256 KiB."""
    queue = queue_service.ensure_queue(unique_name)
    body = json.dumps({"blob": "x" * 100_000})
    queue.send(body)
    [message] = poll(lambda: queue.receive())
    assert message.body == body
    queue.ack(message)


def test_long_poll_returns_early_when_a_message_arrives(
    queue_service: QueueService, unique_name: str
) -> None:
    queue = queue_service.ensure_queue(unique_name)
    sender = threading.Timer(0.5, lambda: queue.send("late"))
    sender.start()
    started = time.monotonic()
    got = queue.receive(wait_seconds=15)
    elapsed = time.monotonic() - started
    sender.join()
    assert [m.body for m in got] == ["late"]
    assert elapsed < 8, f"long poll took {elapsed:.1f}s"


def _consume(info: dict[str, object], total: int, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue = open_queue_from_info(info)
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        batch = queue.receive(max_messages=3, visibility_timeout=60, wait_seconds=1)
        for message in batch:
            seen.append(message.body)
            queue.ack(message)
        if not batch and queue.approximate_count() == 0:
            break
    results.put(seen)


def test_competing_consumers_get_each_message_once(queue_service: QueueService, unique_name: str) -> None:
    queue = queue_service.ensure_queue(unique_name)
    total = 20
    for i in range(total):
        queue.send(f"job-{i}")
    info = queue_service.connection_info(unique_name)
    info = json.loads(json.dumps(info))  # what crosses to the machine is JSON
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_consume, args=(info, total, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    seen = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    everything = seen[0] + seen[1]
    assert sorted(everything) == sorted(f"job-{i}" for i in range(total))
    assert len(set(everything)) == total


def test_delete_queue(queue_service: QueueService, unique_name: str) -> None:
    queue_service.ensure_queue(unique_name).send("bye")
    queue_service.delete_queue(unique_name)
    queue = queue_service.ensure_queue(unique_name)
    assert poll(lambda: queue.receive(), timeout=0.5) == []
