"""Scheduled lock extension (immutability by generations, docs/format.md): the scheduler runs the
``extend-locks`` maintenance step for every immutable backup repository, at most once a generation.

Whether a repository is due is judged from the database, not the repository (a pass runs every
15 s; opening a repository costs a key derivation and several reads): a lease
``extend-locks:<repository id>`` is held until the next extension is due — the last extension plus
one generation, as the step reports it from the repository's lock horizon. A repository whose lease
is free is due; taking the lease is what makes exactly one worker run the step. A step that fails
keeps the lease for ``RETRY_AFTER``, so a broken repository is retried daily, not every pass.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import select

from cloudkeep.errors import CloudkeepError
from cloudkeep.server import leases
from cloudkeep.server.clock import utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import Repository
from cloudkeep.server.logs import event
from cloudkeep.server.services import maintenance

log = logging.getLogger(__name__)
RETRY_AFTER = timedelta(days=1)
ACTOR = "scheduler"


def lease_name(repository_id: str) -> str:
    return f"extend-locks:{repository_id}"


def due_lock_extensions(ctx: ServerContext) -> list[str]:
    """Ids of the immutable backup repositories whose extension lease is free (due now)."""
    with ctx.db() as db:
        ids = list(
            db.scalars(
                select(Repository.id).where(Repository.purpose == "backup", Repository.immutability_days > 0)
            )
        )
    return [i for i in ids if leases.holder_of(ctx, lease_name(i)) is None]


def extend_due_locks(ctx: ServerContext, *, wait: bool = False) -> list[str]:
    """Claim every due repository and run its step (in a thread unless ``wait``); returns their ids.

    "Now" is the server's clock (``cloudkeep.server.clock``), which the step and the leases read too.
    """
    claimed = []
    for repository_id in due_lock_extensions(ctx):
        retry = RETRY_AFTER.total_seconds()
        if not leases.acquire(ctx, lease_name(repository_id), ctx.server_id, ttl_seconds=retry):
            continue  # another worker has it
        claimed.append(repository_id)
        if wait:
            _extend(ctx, repository_id)
        else:
            threading.Thread(
                target=_extend, args=(ctx, repository_id), name="ck-extend-locks", daemon=True
            ).start()
    return claimed


def _extend(ctx: ServerContext, repository_id: str) -> None:
    """One repository's step; the lease then lasts until its next extension is due."""
    try:
        done, result = maintenance.run_extend_locks(ctx, repository_id, actor=ACTOR)
    except CloudkeepError as exc:
        event(log, "extend_locks_failed", level=logging.WARNING, repository=repository_id, error=str(exc))
        return
    except Exception:  # a scheduler thread must not die silently
        log.exception("extend-locks of repository %s failed", repository_id)
        return
    now = utcnow()
    next_due = result.next_due or now + RETRY_AFTER
    hold = max((next_due - now).total_seconds(), 60.0)
    leases.acquire(ctx, lease_name(repository_id), ctx.server_id, ttl_seconds=hold)
    event(log, "extend_locks_scheduled", repository=repository_id, session=done.session_id,
          extended=result.extended, locked_new=result.locked_new, next_due=next_due.isoformat())  # fmt: skip
