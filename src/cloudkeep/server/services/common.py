"""Helpers shared by the service modules: looking things up by id or name, and pagination."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from cloudkeep.errors import ConfigurationError, ConflictError, NotFoundError
from cloudkeep.server.services.schemas import Page

M = TypeVar("M")
V = TypeVar("V")
MAX_LIMIT = 500
MAX_OFFSET = 2**31 - 1  # databases store 64-bit integers at most; nobody pages this far


MIN_PREFIX = 4  # shorter prefixes match too much to be meant; the CLI prints 8 characters
MAX_CANDIDATES = 10  # an ambiguous prefix lists at most this many matches


def resolve(session: Session, model: type[M], ref: str, what: str, *, by_name: bool = True) -> M:
    """Find a row by id, else by unique name, else by a unique id prefix; ``NotFoundError`` names
    what was looked for."""
    row = session.get(model, ref)
    if row is None and by_name and hasattr(model, "name"):
        row = session.scalar(select(model).where(model.name == ref))  # type: ignore[attr-defined,arg-type]
    if row is None:
        row = by_prefix(session, model, ref, what, [model.id])  # type: ignore[attr-defined]
    if row is None:
        raise NotFoundError(
            f"{what} {ref!r} does not exist", hint=f"list them with `cloudkeep {_cli(what)} list`"
        )
    return row


def by_prefix(
    session: Session, model: type[M], ref: str, what: str, columns: Sequence[InstrumentedAttribute[str]]
) -> M | None:
    """The one row whose id (or another of ``columns``) starts with ``ref``, as printed shortened.

    ``None`` when nothing matches or ``ref`` is shorter than ``MIN_PREFIX``; several matches are a
    ``ConfigurationError`` listing them, so a short id never silently picks one of many.
    """
    if len(ref) < MIN_PREFIX:
        return None
    matches = or_(*(column.startswith(ref, autoescape=True) for column in columns))
    rows = session.scalars(select(model).where(matches).limit(MAX_CANDIDATES + 1)).all()
    if len(rows) > 1:
        names = [_candidate(row) for row in rows[:MAX_CANDIDATES]]
        more = ", …" if len(rows) > MAX_CANDIDATES else ""
        raise ConfigurationError(
            f"{what} {ref!r} is ambiguous: it starts {', '.join(names)}{more}",
            hint="give more characters of the id",
        )
    return rows[0] if rows else None


def _candidate(row: Any) -> str:
    name = getattr(row, "name", None)
    return f"{row.id} ({name})" if name else str(row.id)


def _cli(what: str) -> str:
    return what.replace(" ", "-").replace("backup-", "").replace("distribution-", "")


def ensure_unique_name(
    session: Session, model: type[Any], name: str, what: str, *, exclude_id: str | None = None
) -> None:
    stmt = select(model.id).where(model.name == name)
    if exclude_id is not None:
        stmt = stmt.where(model.id != exclude_id)
    if session.scalar(stmt) is not None:
        raise ConflictError(f"a {what} named {name!r} already exists", hint="choose another name")


def check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise ConfigurationError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    if not 0 <= offset <= MAX_OFFSET:
        raise ConfigurationError(f"offset must be between 0 and {MAX_OFFSET}, not {offset}")


def paginate(
    session: Session, stmt: Select[Any], view: Callable[[Any], V], limit: int, offset: int
) -> Page[V]:
    """Run ``stmt`` for one page (plus a count of all rows) and map the rows to views."""
    check_page(limit, offset)
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    rows = session.scalars(stmt.limit(limit).offset(offset)).all()
    return Page[Any](items=[view(row) for row in rows], total=total, limit=limit, offset=offset)
