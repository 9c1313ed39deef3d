"""Services in the shape of their API operation (``server/ops.py``): the path names the target
``ref`` and a started session comes back as a body, where the service itself says it otherwise."""

from __future__ import annotations

from cloudkeep.server.context import ServerContext
from cloudkeep.server.ops import StoppedSessions
from cloudkeep.server.services import jobs, operations
from cloudkeep.server.services.schemas import (
    BrowseResult,
    FileRestoreRequest,
    JobStart,
    JobView,
    SessionStarted,
    VolumeRestoreRequest,
)


def rescan_group(
    ctx: ServerContext, ref: str, data: JobStart | None = None, *, actor: str = "local"
) -> SessionStarted:
    """Look for machines again in a protection group (all of its machines, or those named)."""
    machines = data.machines if data else None
    return SessionStarted(session_id=operations.start_rescan(ctx, ref, machines=machines, actor=actor))


def enable_job(ctx: ServerContext, ref: str, *, actor: str = "local") -> JobView:
    """Let the schedule run the job again."""
    return jobs.set_job_enabled(ctx, ref, True, actor=actor)


def disable_job(ctx: ServerContext, ref: str, *, actor: str = "local") -> JobView:
    """Keep the schedule from running the job (it can still be started by hand)."""
    return jobs.set_job_enabled(ctx, ref, False, actor=actor)


def start_job(
    ctx: ServerContext, ref: str, data: JobStart | None = None, *, actor: str = "local"
) -> SessionStarted:
    """Run a backup job now (on all of its machines, or on those named)."""
    machines = data.machines if data else None
    return SessionStarted(session_id=operations.start_job(ctx, ref, machines=machines, actor=actor))


def stop_job(ctx: ServerContext, ref: str, *, actor: str = "local") -> StoppedSessions:
    """Stop every running session of a job."""
    return StoppedSessions(session_ids=operations.stop_job(ctx, ref, actor=actor))


def stop_session(ctx: ServerContext, session_id: str, *, actor: str = "local") -> SessionStarted:
    """Ask a running session to stop."""
    return SessionStarted(session_id=operations.stop_session(ctx, session_id, actor=actor))


def browse(
    ctx: ServerContext, ref: str, path: str = "/", recursive: bool = False, pattern: str | None = None
) -> BrowseResult:
    """List a folder of a restore point (``recursive``: everything below it; ``pattern``: a glob)."""
    return operations.browse(ctx, ref, path, recursive=recursive, pattern=pattern)


def restore_files(
    ctx: ServerContext, ref: str, data: FileRestoreRequest, *, actor: str = "local"
) -> SessionStarted:
    """Restore files of a restore point to a machine."""
    return SessionStarted(session_id=operations.start_file_restore(ctx, ref, data, actor=actor))


def restore_volume(
    ctx: ServerContext, ref: str, data: VolumeRestoreRequest, *, actor: str = "local"
) -> SessionStarted:
    """Write a volume of a restore point to a device or image file on a machine."""
    return SessionStarted(session_id=operations.start_volume_restore(ctx, ref, data, actor=actor))
