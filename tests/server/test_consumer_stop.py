"""Stopping the server-queue consumers does not wait out SQS's 20-second long poll (moto server)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.machine.harness import wait_for
from tests.server.jobs_fakes import make_context
from tests.support.peers import MotoServer

from cloudkeep.providers import get_provider
from cloudkeep.server.consumer import ServerQueueConsumer
from cloudkeep.server.context import ServerContext

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ServerContext]:
    context = make_context(tmp_path)
    yield context
    context.close()


@pytest.mark.moto
def test_stop_returns_during_a_long_poll_and_hands_back_what_it_then_gets(
    ctx: ServerContext, moto_server: MotoServer
) -> None:
    provider = get_provider("aws", KEYS, {"endpoint_url": moto_server.endpoint, "region": "us-east-1"})
    queue = provider.queues.ensure_queue(f"ck-stop-{time.monotonic_ns()}")
    consumer = ServerQueueConsumer(ctx, queue, workers=1, wait_seconds=6.0).start()
    wait_for(lambda: consumer._polling, timeout=10, what="the worker to be in its long poll")
    started = time.monotonic()
    consumer.stop()
    assert time.monotonic() - started < 2.0  # not the rest of the 6 s poll (SQS: 20 s)
    # The poll still in flight returns this message; the stopped worker must not apply it but hand
    # it back at once (visibility 0), not hide it for the 60 s it asked for.
    queue.send('{"not": "applied"}')
    wait_for(lambda: not consumer.threads[0].is_alive(), timeout=30, what="the worker to end")
    assert consumer.counts == {}
    again = wait_for(
        lambda: queue.receive(max_messages=1, visibility_timeout=30, wait_seconds=1),
        timeout=10,
        what="the handed-back message to be visible again",
    )
    assert again[0].body == '{"not": "applied"}'
    provider.close()
