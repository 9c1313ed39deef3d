"""The consumers' read point, shared through the database.

While the server queue is backed up, a machine's newest heartbeat may wait unread on it, so the
dispatcher judges a machine silent from the time up to which the consumers have read the queue
(``HeartbeatWriter.read_point``), not from the wall clock. That point lives in the process running
the consumers; a job runner in another process (``server start --workers N``, or consumers in
processes of their own) used to see none and sent a backed-up fleet to the fallback. Each
consumer therefore publishes its point here (a row per account and process, rewritten when it
moves and refreshed every ``REFRESH_SECONDS``), and a process without consumers reads it.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import ConsumerProgress

MIN_INTERVAL_SECONDS = 1.0  # a moving point is written at most this often (one UPDATE per process)
REFRESH_SECONDS = 10.0  # an unchanged point is rewritten this often, so readers know it is alive
FRESH_SECONDS = 30.0  # a row older than this is a stopped or stuck consumer: it proves nothing
FORGET_SECONDS = 86_400.0  # rows this old are deleted when a process publishes for the first time
HOLDER = f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(3)}"  # this process


def publish(
    ctx: ServerContext, credential_id: str, point: datetime | None, now: datetime, *, holder: str = HOLDER
) -> None:
    """Record this process's read point of ``credential_id``'s server queue (None: keeping up)."""
    with ctx.db() as session:
        changed = session.execute(
            update(ConsumerProgress)
            .where(ConsumerProgress.credential_id == credential_id, ConsumerProgress.holder == holder)
            .values(read_point=point, reported_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if not changed:  # the first report of this process (holders are per process: no race)
            session.add(ConsumerProgress(credential_id=credential_id, holder=holder, read_point=point,
                                         reported_at=now))  # fmt: skip
            # ... and the moment to drop the rows of processes long gone (each restart adds one)
            session.execute(
                delete(ConsumerProgress)
                .where(ConsumerProgress.reported_at < now - timedelta(seconds=FORGET_SECONDS))
                .execution_options(synchronize_session=False)
            )


def shared(ctx: ServerContext, credential_id: str, now: datetime) -> datetime | None:
    """The read point other processes' consumers report for the account: None unless every live
    one is behind (one that keeps up means the catalog is current); else the furthest point (the
    least grace: a machine is given only what the most advanced reader cannot yet vouch for)."""
    with ctx.db() as session:
        rows = session.execute(
            select(ConsumerProgress.read_point).where(
                ConsumerProgress.credential_id == credential_id,
                ConsumerProgress.reported_at >= now - timedelta(seconds=FRESH_SECONDS),
            )
        ).all()
    points = [row[0] for row in rows]
    if not points or any(point is None for point in points):
        return None
    return max(point for point in points if point is not None)
