"""Which protection groups are due a scheduled rescan (called by the job scheduler's loop).

``ProtectionGroup.rescan_schedule`` uses the backup schedule format (``cloudkeep.server.jobs.
schedule``: daily / monthly / periodic, time zone, window); a group is due when the schedule's
next run after its last rescan (or its creation) has passed and no rescan of it is running.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select

from cloudkeep.errors import ConfigurationError
from cloudkeep.server import leases
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import ProtectionGroup
from cloudkeep.server.scheduling.schedule import next_run, validate_schedule

log = logging.getLogger(__name__)


def due_rescans(ctx: ServerContext, now: datetime) -> list[str]:
    """Ids of enabled groups whose scheduled rescan is due at ``now`` (timezone-aware)."""
    due: list[str] = []
    with ctx.db() as session:
        groups = [
            (g.id, g.name, g.rescan_schedule, g.last_rescan_at or g.created_at)
            for g in session.scalars(select(ProtectionGroup).where(ProtectionGroup.enabled.is_(True)))
            if g.rescan_schedule
        ]
    for group_id, name, raw, since in groups:
        try:
            schedule = validate_schedule(dict(raw))
        except ConfigurationError as exc:
            log.warning("protection group %s: invalid rescan schedule: %s", name, exc)
            continue
        when = next_run(schedule, since)
        if when is not None and when <= now and leases.holder_of(ctx, f"rescan:{group_id}") is None:
            due.append(group_id)
    return due
