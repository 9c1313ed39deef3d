"""The server-queue consumers this process runs: one ``ServerQueueConsumer`` per account in use.

Started once per process (``ensure_consumers``) by whatever needs results applied: the API
server, a session runner, the CLI in embedded mode. Their read point of the queue is asked for
by the dispatcher here, or through the database from processes that run none (``read_point``).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from sqlalchemy import select

from cloudkeep.errors import CloudkeepError
from cloudkeep.server import read_point, result_notify
from cloudkeep.server.clock import utcnow
from cloudkeep.server.consumer import ServerQueueConsumer, server_queue_name
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import ProtectionGroup

log = logging.getLogger(__name__)
_CONSUMERS: dict[tuple[str, str, str], ServerQueueConsumer] = {}
_CONSUMERS_LOCK = threading.Lock()


def ensure_consumers(ctx: ServerContext, workers: int = 2) -> None:
    """Start (once per process) consumer threads on the server queue of every account in use."""
    with ctx.db() as session:
        credential_ids = sorted(set(session.scalars(select(ProtectionGroup.credential_id))))
    name = server_queue_name(ctx.server_id)
    for credential_id in credential_ids:
        key = (ctx.settings.effective_database_url, ctx.server_id, credential_id)
        with _CONSUMERS_LOCK:
            if key in _CONSUMERS:
                continue
            try:
                provider = ctx.provider_for(credential_id)
                queue = provider.queues.ensure_queue(name)
            except CloudkeepError as exc:
                log.warning("no server queue consumer for credential %s: %s", credential_id, exc)
                continue
            wait = provider.facts.server_queue_wait
            _CONSUMERS[key] = ServerQueueConsumer(
                ctx, queue, workers=workers, wait_seconds=wait, credential_id=credential_id
            ).start()
            log.info(
                "consuming server queue %s for credential %s with %d workers", name, credential_id, workers
            )


def consumer_queue_depths() -> dict[str, int]:
    """Approximate waiting messages on each server queue this process consumes (for ``/metrics``)."""
    with _CONSUMERS_LOCK:
        consumers = list(_CONSUMERS.values())
    depths: dict[str, int] = {}
    for consumer in consumers:
        try:
            depths[consumer.queue.name] = consumer.queue.approximate_count()
        except Exception as exc:  # a scrape must not fail because one cloud is slow or down
            log.debug("queue depth of %s unavailable: %s", consumer.queue.name, exc)
    return depths


def consumer_read_point(
    ctx: ServerContext, credential_id: str, now: datetime | None = None
) -> datetime | None:
    """How far the consumers have read that account's server queue while it is backed up (None:
    they keep up, or none run): this process's own, else what other processes' publish."""
    key = (ctx.settings.effective_database_url, ctx.server_id, credential_id)
    with _CONSUMERS_LOCK:
        consumer = _CONSUMERS.get(key)
    if consumer is not None:
        return consumer.read_point
    return read_point.shared(ctx, credential_id, now or utcnow())


def stop_consumers() -> None:
    """Stop every consumer this process started (tests, shutdown)."""
    with _CONSUMERS_LOCK:
        consumers = list(_CONSUMERS.values())
        _CONSUMERS.clear()
    for consumer in consumers:
        consumer.stop()
    result_notify.stop_listeners()
