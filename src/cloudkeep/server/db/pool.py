"""How many database connections one server process needs, from its settings.

Every thread that works on the catalog holds at most one connection at a time, and only for a
short transaction. Per process they are: the job runner's machine threads and the fallback pool
(``settings.parallel_machines`` each), the server-queue consumers (two readers and a heartbeat
writer per account), the scheduler, the API's request threads, and rescan workers
(``settings.rescan_concurrency``). The steady part is kept open; bursts (fallbacks, rescans)
open overflow connections that are closed again when returned. The PostgreSQL listener that wakes
result waiters (``result_notify``) holds one connection of its own, outside the pool.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, text

from cloudkeep.config import Settings

CONSUMER_CONNECTIONS = 3  # two readers and the heartbeat writer (one account in use)
SERVICE_CONNECTIONS = 5  # the scheduler and the API's request threads at once
LISTENER_CONNECTIONS = 1  # result_notify's LISTEN connection, outside the pool
SUPERUSER_RESERVED = 3  # PostgreSQL's default superuser_reserved_connections


@dataclass(frozen=True)
class PoolSize:
    size: int  # kept open
    overflow: int  # opened for bursts, closed when returned

    @property
    def most(self) -> int:
        """The most connections one process can hold at once (pool, overflow and listener)."""
        return self.size + self.overflow + LISTENER_CONNECTIONS


def pool_size(settings: Settings) -> PoolSize:
    """The pool one process opens: machine threads steady, fallbacks and rescans as overflow."""
    return PoolSize(
        size=settings.parallel_machines + CONSUMER_CONNECTIONS + SERVICE_CONNECTIONS,
        overflow=settings.parallel_machines + settings.rescan_concurrency,
    )


def default_pool() -> PoolSize:
    """The pool of the settings' defaults (an engine made without settings; the environment is not read)."""
    return pool_size(Settings.model_construct())


def required_max_connections(settings: Settings, processes: int) -> int:
    """PostgreSQL's ``max_connections`` for ``processes`` server processes on one database."""
    return processes * pool_size(settings).most + SUPERUSER_RESERVED


def max_connections_warning(settings: Settings, processes: int, max_connections: int) -> str | None:
    """What to tell the administrator when the database allows fewer connections than needed."""
    need = required_max_connections(settings, processes)
    if max_connections >= need:
        return None
    return (
        f"PostgreSQL allows {max_connections} connections, but {processes} server process(es) with "
        f"parallel_machines={settings.parallel_machines} and rescan_concurrency="
        f"{settings.rescan_concurrency} may open {need}: raise max_connections to at least {need} "
        "(postgresql.conf), or lower CLOUDKEEP_PARALLEL_MACHINES / --workers"
    )


def check_max_connections(engine: Engine, settings: Settings, processes: int) -> str | None:
    """Ask PostgreSQL for its ``max_connections`` and warn when ``processes`` could exceed it
    (SQLite has no such limit: None)."""
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        allowed = int(conn.execute(text("SHOW max_connections")).scalar_one())
    return max_connections_warning(settings, processes, allowed)
