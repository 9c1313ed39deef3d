"""One helper for the ``list`` / ``show`` / delete commands every group has (issue 17).

A group describes itself in a ``Resource`` (how to fetch, list and delete, the table's columns)
and ``add_resource_commands`` registers the commands, with the same options and output everywhere:
``--json``, ``--wide``, names for ids, and ``--yes`` / ``--dry-run`` on the delete.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import typer
from pydantic import BaseModel

from cloudkeep.cli.common import (
    DRY_RUN_OPTION,
    JSON_OPTION,
    LIMIT_OPTION,
    OFFSET_OPTION,
    WIDE_OPTION,
    YES_OPTION,
    Column,
    Names,
    client,
    confirm,
    done,
    dump,
    render_object,
    render_page,
)
from cloudkeep.cli.completion import names_of
from cloudkeep.server.client import Client
from cloudkeep.server.services.schemas import Page


@dataclass(frozen=True)
class Resource:
    """What a group's list/show/delete commands need; ``add_resource_commands`` builds them."""

    noun: str  # "job", in messages and help
    title: str  # the list's table title
    columns: Sequence[Column]
    get: Callable[[Client, str], BaseModel]
    list_page: Callable[..., Page[Any]] | None = None  # (client, limit=, offset=); None: the group's own
    delete: Callable[[Client, str], None] | None = None
    delete_command: str = "delete"
    delete_help: str = ""
    show_help: str = ""
    kind: str | None = None  # what the names of its refs complete from (see cloudkeep.cli.completion)


def add_resource_commands(app: typer.Typer, spec: Resource) -> None:
    """Register ``list``, ``show`` and the delete command of one group from its spec."""
    ref_help = "Id (or a unique prefix of at least 4 characters) or name."
    complete = names_of(spec.kind) if spec.kind else None
    list_page = spec.list_page
    delete = spec.delete

    if list_page is not None:

        def list_(
            ctx: typer.Context,
            as_json: bool = JSON_OPTION,
            wide: bool = WIDE_OPTION,
            limit: int = LIMIT_OPTION,
            offset: int = OFFSET_OPTION,
        ) -> None:
            with client(ctx) as c:
                page = list_page(c, limit=limit, offset=offset)
                render_page(page, as_json, spec.columns, title=spec.title, names=Names(c), wide=wide)

        list_.__doc__ = f"List {spec.title.lower()}."
        app.command("list")(list_)

    def show(
        ctx: typer.Context,
        ref: str = typer.Argument(..., help=ref_help, autocompletion=complete),
        as_json: bool = JSON_OPTION,
    ) -> None:
        with client(ctx) as c:
            render_object(spec.get(c, ref), as_json, title=spec.noun.capitalize(), names=Names(c))

    show.__doc__ = spec.show_help or f"Show one {spec.noun}."
    app.command("show")(show)

    if delete is not None:

        def delete_(
            ctx: typer.Context,
            ref: str = typer.Argument(..., help=ref_help, autocompletion=complete),
            yes: bool = YES_OPTION,
            dry_run: bool = DRY_RUN_OPTION,
            as_json: bool = JSON_OPTION,
        ) -> None:
            with client(ctx) as c:
                target = spec.get(c, ref)  # resolves a prefix and says "not found" before asking
                name = getattr(target, "name", None) or getattr(target, "id", ref)
                ident = getattr(target, "id", ref)
                what = f"{spec.noun} {name} ({str(ident)[:8]})"
                if dry_run:
                    done(
                        f"would {spec.delete_command} {what}; nothing changed",
                        as_json,
                        dry_run=True,
                        would_delete=dump(target),
                    )
                    return
                confirm(f"{spec.delete_command.capitalize()} {what}?", yes=yes)
                delete(c, ident)
            done(f"{spec.noun} {name} {spec.delete_command}d", as_json, deleted=ident, name=name)

        delete_.__doc__ = spec.delete_help or f"{spec.delete_command.capitalize()} a {spec.noun}."
        app.command(spec.delete_command)(delete_)
