"""Errors as structured JSON: ``{"error": {"type", "message", "hint"}}`` with a fitting status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DataError
from sqlalchemy.exc import IntegrityError as DatabaseIntegrityError
from starlette.exceptions import HTTPException

from cloudkeep.errors import (
    AuthenticationError,
    CloudkeepError,
    ConfigurationError,
    ConflictError,
    InsufficientSpaceError,
    IntegrityError,
    NotFoundError,
    PermissionDeniedError,
    RepositoryWriteError,
    RestoreIncompleteError,
    UnreachableError,
)

log = logging.getLogger(__name__)

STATUS: list[tuple[type[CloudkeepError], int, str]] = [
    # the store refused a write the server made (init, maintenance): retry once storage is fixed
    (RepositoryWriteError, 503, "repository_write"),
    (NotFoundError, 404, "not_found"),
    (ConflictError, 409, "conflict"),
    (ConfigurationError, 422, "invalid"),
    (PermissionDeniedError, 403, "permission_denied"),
    (AuthenticationError, 401, "unauthenticated"),
    (UnreachableError, 502, "unreachable"),
    (InsufficientSpaceError, 507, "insufficient_space"),
    (RestoreIncompleteError, 422, "restore_incomplete"),
    # stored data is not what it should be (an altered restore point): the request cannot proceed
    (IntegrityError, 409, "integrity"),
]


class ErrorDetail(BaseModel):
    """What went wrong, in words a user can act on."""

    model_config = ConfigDict(extra="allow")  # validation errors add ``details``
    type: str = Field(description="A stable machine-readable kind: not_found, conflict, invalid, …")
    message: str
    hint: str | None = Field(default=None, description="What to do about it, when known.")


class ErrorBody(BaseModel):
    """Every error answer has this shape (never a bare traceback)."""

    error: ErrorDetail

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"error": {"type": "not_found", "message": "job 'nightly' does not exist", "hint": None}}
            ]
        }
    )


def _response(description: str) -> dict[str, object]:
    return {"model": ErrorBody, "description": description}


# Declared on every API operation so the spec shows the real error shape (and replaces FastAPI's
# default 422 schema, which this API never sends).
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    401: _response("No or an unknown API token (`Authorization: Bearer <token>`)."),
    403: _response("The token's scope does not allow this (read-only token on a change)."),
    404: _response("A named object does not exist."),
    409: _response("The change conflicts with the current state or stored data."),
    422: _response("The request or a value in it is invalid; `hint` says how to fix it."),
    500: _response("An unexpected server error."),
    503: _response("The repository's storage refused a write (`repository_write`): full, denied, failing."),
}


def error_body(kind: str, message: str, hint: str | None = None, **extra: object) -> dict[str, object]:
    return {"error": {"type": kind, "message": message, "hint": hint, **extra}}


def status_for(exc: CloudkeepError) -> tuple[int, str]:
    for cls, status, kind in STATUS:
        if isinstance(exc, cls):
            return status, kind
    return 500, "error"


async def _cloudkeep_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CloudkeepError)
    status, kind = status_for(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(kind, exc.message, exc.hint), status_code=status, headers=headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", ""))} for err in exc.errors()
    ]  # never echo the input: it may hold a secret
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    message = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    body = error_body("validation", message, "see the OpenAPI spec at /api/v1/openapi.json", details=details)
    return JSONResponse(body, status_code=422)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        error_body("http", str(exc.detail)),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _database_conflict(_request: Request, exc: Exception) -> JSONResponse:
    log.info("database constraint refused a change: %s", type(exc).__name__)
    return JSONResponse(
        error_body("conflict", "the change clashes with existing data (a concurrent change?)", "retry"),
        status_code=409,
    )


async def _database_data_error(_request: Request, exc: Exception) -> JSONResponse:
    log.info("database refused a value: %s", type(exc).__name__)
    return JSONResponse(
        error_body("invalid", "a value in the request cannot be stored or looked up"), status_code=422
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(CloudkeepError, _cloudkeep_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(DatabaseIntegrityError, _database_conflict)
    app.add_exception_handler(DataError, _database_data_error)
