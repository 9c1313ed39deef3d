"""The API's routes: one per ``Op`` of ``server/ops.py``, plus the two that stream.

A route's parameters are its service's: a model is the JSON body, a name in the path is a path
parameter, the rest are query parameters (``limit``/``offset`` with the page bounds, others with the
op's ``constraints``). The service's docstring is the operation's description.
"""

from __future__ import annotations

import inspect
import shutil
import tarfile
import tempfile
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from cloudkeep.server import ops
from cloudkeep.server.api.deps import Admin, Ctx, Limit, Offset, Reader
from cloudkeep.server.context import ServerContext
from cloudkeep.server.services import operations, restore_points, sessions

_PAGING = {"limit": Limit, "offset": Offset}


def _is_model(annotation: Any) -> bool:
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return any(isinstance(o, type) and issubclass(o, BaseModel) for o in options)


def _parameters(op: ops.Op[Any], service: Callable[..., Any]) -> list[inspect.Parameter]:
    """The route's own parameters, from the service's (minus the context and the acting user)."""
    hints = typing.get_type_hints(service, include_extras=True)
    who = Admin if op.admin else Reader
    built = [
        inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Ctx),
        inspect.Parameter("who", inspect.Parameter.KEYWORD_ONLY, annotation=who),
    ]
    for param in list(inspect.signature(service).parameters.values())[1:]:
        if op.audited and param.name == "actor":
            continue
        annotation = hints[param.name]
        if param.name in op.path_params:
            pass
        elif _is_model(annotation):
            if param.default is None:
                annotation = Annotated[annotation, Body()]
        elif param.name in op.constraints:
            annotation = Annotated[annotation, Query(**op.constraints[param.name])]
        elif param.name in _PAGING:
            annotation = _PAGING[param.name]
        built.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotation))
    return built


def _endpoint(op: ops.Op[Any]) -> Callable[..., Any]:
    service = ops.service_of(op)

    def endpoint(*, ctx: ServerContext, who: Any, **args: Any) -> Any:
        result = service(ctx, **args, actor=who.name) if op.audited else service(ctx, **args)
        return Response(status_code=204) if op.result is ops.NoContent else result

    endpoint.__name__ = op.name
    endpoint.__doc__ = service.__doc__
    endpoint.__signature__ = inspect.Signature(_parameters(op, service))  # type: ignore[attr-defined]
    return endpoint


def build_router() -> APIRouter:
    """Every route of the API (without its prefix)."""
    router = APIRouter()
    for op in ops.ALL:
        body: dict[str, Any] = (
            {"response_class": Response} if op.result is ops.NoContent else {"response_model": op.result}
        )
        route = _endpoint(op)
        router.add_api_route(
            op.path, route, methods=[op.method], status_code=op.status, tags=[op.tag], **body
        )
    router.add_api_route(
        "/sessions/{session_id}/events",
        session_events,
        methods=["GET"],
        tags=["sessions"],
        response_class=StreamingResponse,
        responses={
            200: {"content": {"application/x-ndjson": {}}, "description": "One SessionDetail per line."}
        },
    )
    router.add_api_route(
        "/restore-points/{ref}/download",
        download,
        methods=["POST"],
        tags=["restore"],
        response_class=Response,
        responses={200: {"content": {"application/x-tar": {}}, "description": "The files as a tar archive."}},
    )
    router.add_api_route(
        "/restore-points/{ref}/export",
        export,
        methods=["POST"],
        tags=["restore"],
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}}, "description": "The disk image."}},
    )
    return router


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


def download(ctx: Ctx, who: Admin, ref: str, data: ops.DownloadRequest) -> Response:
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


def export(ctx: Ctx, who: Admin, ref: str, data: ops.ExportRequest) -> Response:
    """Write a volume restore point as a raw image or a fixed VHD on the server and stream it back."""
    restore_points.get_restore_point(ctx, ref)
    workdir = Path(tempfile.mkdtemp(prefix="ck-export-"))
    image = workdir / "disk.img"  # on disk and sent from there: never whole in memory
    try:
        result = operations.export_image(ctx, ref, image, image_format=data.image_format, actor=who.name)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    headers = {header: str(result[key]) for key, header in ops.EXPORT_HEADERS.items()}
    return FileResponse(
        image,
        media_type="application/octet-stream",
        headers=headers,
        background=BackgroundTask(shutil.rmtree, workdir, ignore_errors=True),
    )
