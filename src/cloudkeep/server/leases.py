"""Named leases on the database: how several server workers agree on who does scheduled work.

A lease is one row (``leases.name`` is the primary key). Taking it is a single conditional
UPDATE — "set holder = me where the lease is mine or has expired" — followed, when no row
exists yet, by an INSERT that the primary key lets only one worker win. On PostgreSQL the
UPDATE takes a row lock and re-checks its condition after a concurrent writer commits
(READ COMMITTED), so two workers racing for an expired lease cannot both see rowcount 1.
SQLite serialises writers, which gives the same result for embedded mode.

``claim_once`` is the permanent variant for "this exact piece of work happens once": e.g. the
scheduler claims ``job:<id>@<scheduled time>`` before starting a scheduled run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from cloudkeep.server.clock import utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import Lease

_FOREVER = datetime(9999, 1, 1, tzinfo=UTC)


def acquire(ctx: ServerContext, name: str, holder: str, *, ttl_seconds: float) -> bool:
    """Take or renew lease ``name`` for ``ttl_seconds``; True when ``holder`` now holds it."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl_seconds)
    with ctx.db() as session:
        result = session.execute(
            update(Lease)
            .where(Lease.name == name, or_(Lease.holder == holder, Lease.expires_at < now))
            .values(holder=holder, expires_at=expires)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            return True
        if session.get(Lease, name) is not None:
            return False
    try:
        with ctx.db() as session:
            session.add(Lease(name=name, holder=holder, expires_at=expires))
        return True
    except IntegrityError:  # another worker inserted it first
        return False


def release(ctx: ServerContext, name: str, holder: str) -> bool:
    """Give the lease up early (only its holder can); True when it was held."""
    with ctx.db() as session:
        result = session.execute(
            delete(Lease)
            .where(Lease.name == name, Lease.holder == holder)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def holder_of(ctx: ServerContext, name: str) -> str | None:
    """Who holds ``name`` right now (None when free or expired)."""
    with ctx.db() as session:
        lease = session.scalar(select(Lease).where(Lease.name == name))
        if lease is None or lease.expires_at < utcnow():
            return None
        return lease.holder


def claim_once(ctx: ServerContext, key: str, holder: str) -> bool:
    """Claim a piece of work forever; exactly one caller across all workers ever gets True."""
    try:
        with ctx.db() as session:
            session.add(Lease(name=key, holder=holder, expires_at=_FOREVER))
        return True
    except IntegrityError:
        return False


def purge_expired(ctx: ServerContext) -> int:
    """Delete expired leases (housekeeping; claims made with ``claim_once`` never expire)."""
    with ctx.db() as session:
        result = session.execute(
            delete(Lease).where(Lease.expires_at < utcnow()).execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
