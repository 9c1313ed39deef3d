"""Routes: jobs, sessions (with a progress stream), restore points and restores."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, Query, Response
from fastapi.responses import FileResponse, StreamingResponse
from starlette.background import BackgroundTask

from cloudkeep.server.api.deps import Admin, Ctx, Limit, Offset, Reader
from cloudkeep.server.services import jobs, operations, restore_points, sessions
from cloudkeep.server.services.schemas import (
    BrowseResult,
    FileRestoreRequest,
    JobCreate,
    JobStart,
    JobUpdate,
    JobView,
    Model,
    Page,
    RestorePointView,
    SearchHit,
    SessionDetail,
    SessionStarted,
    SessionView,
    VolumeRestoreRequest,
)

router = APIRouter()


class StoppedSessions(Model):
    session_ids: list[str]


class DownloadRequest(Model):
    paths: list[str]


@router.get("/jobs", tags=["jobs"])
def list_jobs(ctx: Ctx, _: Reader, limit: Limit = 100, offset: Offset = 0) -> Page[JobView]:
    return jobs.list_jobs(ctx, limit=limit, offset=offset)


@router.post("/jobs", status_code=201, tags=["jobs"])
def create_job(ctx: Ctx, who: Admin, data: JobCreate) -> JobView:
    return jobs.create_job(ctx, data, actor=who.name)


@router.get("/jobs/{ref}", tags=["jobs"])
def get_job(ctx: Ctx, _: Reader, ref: str) -> JobView:
    return jobs.get_job(ctx, ref)


@router.patch("/jobs/{ref}", tags=["jobs"])
def update_job(ctx: Ctx, who: Admin, ref: str, data: JobUpdate) -> JobView:
    return jobs.update_job(ctx, ref, data, actor=who.name)


@router.delete("/jobs/{ref}", status_code=204, tags=["jobs"])
def delete_job(ctx: Ctx, who: Admin, ref: str) -> Response:
    jobs.delete_job(ctx, ref, actor=who.name)
    return Response(status_code=204)


@router.post("/jobs/{ref}/enable", tags=["jobs"])
def enable_job(ctx: Ctx, who: Admin, ref: str) -> JobView:
    return jobs.set_job_enabled(ctx, ref, True, actor=who.name)


@router.post("/jobs/{ref}/disable", tags=["jobs"])
def disable_job(ctx: Ctx, who: Admin, ref: str) -> JobView:
    return jobs.set_job_enabled(ctx, ref, False, actor=who.name)


@router.post("/jobs/{ref}/start", status_code=202, tags=["jobs"])
def start_job(
    ctx: Ctx, who: Admin, ref: str, data: Annotated[JobStart | None, Body()] = None
) -> SessionStarted:
    machine_refs = data.machines if data else None
    return SessionStarted(session_id=operations.start_job(ctx, ref, machines=machine_refs, actor=who.name))


@router.post("/jobs/{ref}/stop", status_code=202, tags=["jobs"])
def stop_job(ctx: Ctx, who: Admin, ref: str) -> StoppedSessions:
    return StoppedSessions(session_ids=operations.stop_job(ctx, ref, actor=who.name))


@router.get("/sessions", tags=["sessions"])
def list_sessions(
    ctx: Ctx,
    _: Reader,
    kind: str | None = None,
    state: str | None = None,
    job: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[SessionView]:
    return sessions.list_sessions(ctx, kind=kind, state=state, job=job, limit=limit, offset=offset)


@router.get("/sessions/{session_id}", tags=["sessions"])
def get_session(ctx: Ctx, _: Reader, session_id: str) -> SessionDetail:
    return sessions.get_session(ctx, session_id)


@router.get(
    "/sessions/{session_id}/events",
    tags=["sessions"],
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "One SessionDetail per line."}},
)
def session_events(
    ctx: Ctx,
    _: Reader,
    session_id: str,
    timeout: Annotated[float, Query(gt=0, le=86400)] = 3600,
    poll: Annotated[float, Query(ge=0.05, le=60)] = 0.5,
) -> StreamingResponse:
    """Stream the session as NDJSON: a line whenever it changes, the last one in a terminal state."""
    sessions.get_session(ctx, session_id)  # 404 before the stream starts

    def lines() -> Iterator[str]:
        for detail in sessions.watch_session(ctx, session_id, poll=poll, timeout=timeout):
            yield detail.model_dump_json() + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.post("/sessions/{session_id}/stop", status_code=202, tags=["sessions"])
def stop_session(ctx: Ctx, who: Admin, session_id: str) -> SessionStarted:
    return SessionStarted(session_id=operations.stop_session(ctx, session_id, actor=who.name))


@router.get("/restore-points", tags=["restore points"])
def list_restore_points(
    ctx: Ctx,
    _: Reader,
    machine: str | None = None,
    job: str | None = None,
    include_removed: bool = False,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[RestorePointView]:
    return restore_points.list_restore_points(
        ctx, machine=machine, job=job, include_removed=include_removed, limit=limit, offset=offset
    )


@router.get("/restore-points/search", tags=["restore points"])
def search_files(
    ctx: Ctx,
    _: Reader,
    pattern: Annotated[str, Query(min_length=1, max_length=500)],
    machine: str | None = None,
    job: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[SearchHit]:
    """Find files by name (or path) glob across restore points."""
    return operations.search(ctx, pattern, machine=machine, job=job, limit=limit)


@router.get("/restore-points/{ref}/browse", tags=["restore points"])
def browse(
    ctx: Ctx,
    _: Reader,
    ref: str,
    path: Annotated[str, Query(max_length=4096)] = "/",
    recursive: bool = False,
    pattern: str | None = None,
) -> BrowseResult:
    return operations.browse(ctx, ref, path, recursive=recursive, pattern=pattern)


@router.get("/restore-points/{ref}", tags=["restore points"])
def get_restore_point(ctx: Ctx, _: Reader, ref: str) -> RestorePointView:
    return restore_points.get_restore_point(ctx, ref)


@router.post("/restore-points/{ref}/restore-files", status_code=202, tags=["restore"])
def restore_files(ctx: Ctx, who: Admin, ref: str, data: FileRestoreRequest) -> SessionStarted:
    return SessionStarted(session_id=operations.start_file_restore(ctx, ref, data, actor=who.name))


@router.post("/restore-points/{ref}/restore-volume", status_code=202, tags=["restore"])
def restore_volume(ctx: Ctx, who: Admin, ref: str, data: VolumeRestoreRequest) -> SessionStarted:
    return SessionStarted(session_id=operations.start_volume_restore(ctx, ref, data, actor=who.name))


@router.post(
    "/restore-points/{ref}/download",
    tags=["restore"],
    response_class=Response,
    responses={200: {"content": {"application/x-tar": {}}, "description": "The files as a tar archive."}},
)
def download(ctx: Ctx, who: Admin, ref: str, data: DownloadRequest) -> Response:
    """Restore files on the server host and send them back as a tar (for remote administrators)."""
    restore_points.get_restore_point(ctx, ref)
    workdir = Path(tempfile.mkdtemp(prefix="ck-download-"))
    archive = workdir.with_suffix(".tar")  # on disk and sent from there: never whole in memory
    try:
        operations.download_files(ctx, ref, data.paths, workdir, actor=who.name)
        with tarfile.open(archive, mode="w") as tar:
            for child in sorted(workdir.iterdir()):
                tar.add(child, arcname=child.name)
    except BaseException:
        archive.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return FileResponse(
        archive, media_type="application/x-tar", background=BackgroundTask(archive.unlink, missing_ok=True)
    )
