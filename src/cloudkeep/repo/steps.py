"""Named step boundaries of prune and backup: a seam for interleaving and crash tests.

Prune and a backup call ``step(name)`` between the writes that order them (see docs/format.md,
"Concurrency and the prune protocol"). In production no hook is installed and a step costs one
global lookup. Tests install a hook to pause there and run another actor, or to SIGKILL the
process, at every boundary in turn.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

StepHook = Callable[[str], None]

PRUNE_STEPS = (
    "prune:locked",  # maintenance lock held
    "prune:loaded",  # index, snapshots and pack listing read
    "prune:index-consolidated",  # index written without the packs about to go
    "prune:old-index-removed",  # superseded index files deleted
    "prune:packs-deleted",  # swept packs deleted
    "prune:markers-removed",  # swept markers removed
    "prune:repacked",  # used blobs of sparse packs copied and indexed
    "prune:marked",  # new marker visible
    "prune:armed",  # the marker lists the sessions that were live once it was visible
)
BACKUP_STEPS = (
    "backup:session-started",  # session marker visible
    "backup:doomed-refreshed",  # dedup index excludes every visible mark
    "backup:pack-uploaded",  # one pack stored (before its index entry exists)
    "backup:index-written",  # one index file stored
    "backup:flushed",  # every pack and index file durable
    "backup:snapshot-written",  # manifest stored (the commit point)
    "backup:session-ended",  # session marker removed
)
INDEX_CACHE_STEPS = ("index-cache:temp-written",)  # an entry's bytes on disk, not yet renamed into place
VOUCH_STEPS = (
    "vouch:verified",  # every new pack read and checked, nothing written
    "vouch:written",  # the run's vouched file stored
    "vouch:consolidated",  # the files it replaced removed
)

_hook: StepHook | None = None


def step(name: str) -> None:
    """Mark a step boundary; calls the installed test hook, if any."""
    hook = _hook
    if hook is not None:
        hook(name)


@contextlib.contextmanager
def hooked(hook: StepHook) -> Iterator[None]:
    """Install ``hook`` for the duration of the block (tests only)."""
    global _hook
    previous, _hook = _hook, hook
    try:
        yield
    finally:
        _hook = previous
