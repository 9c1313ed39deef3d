"""`cloudkeep restore-point …`: the catalog of restore points."""

from __future__ import annotations

from typing import Any

import typer
from pydantic import BaseModel, ConfigDict

from cloudkeep.cli.common import (
    DRY_RUN_OPTION,
    JSON_OPTION,
    LIMIT_OPTION,
    OFFSET_OPTION,
    WIDE_OPTION,
    YES_OPTION,
    Col,
    Column,
    Names,
    client,
    confirm,
    console,
    human_size,
    print_json,
    print_table,
    render_object,
    render_page,
    short,
    success,
)
from cloudkeep.cli.completion import names_of

app = typer.Typer(help="Restore points.", no_args_is_help=True)
COLUMNS: list[Column] = [
    Col("id", "id", short),
    Col("id", "id", wide=True),
    ("created", "created_at"),
    Col("machine", "machine_id", ref="machine"),
    ("mode", "mode"),
    ("files", "files"),
    ("size", "size", human_size),
    ("gfs", "gfs"),
    ("immutable until", "retain_until"),
    Col("snapshot", "snapshot_id", short),
    Col("snapshot id", "snapshot_id", wide=True),
]


@app.command("list")
def list_(
    ctx: typer.Context,
    machine: str | None = typer.Option(
        None, "--machine", help="Machine id, cloud id or name.", autocompletion=names_of("machine")
    ),
    job: str | None = typer.Option(None, "--job", help="Job id or name.", autocompletion=names_of("job")),
    include_removed: bool = typer.Option(
        False, "--include-removed", help="Also points removed by retention."
    ),
    as_json: bool = JSON_OPTION,
    wide: bool = WIDE_OPTION,
    limit: int = LIMIT_OPTION,
    offset: int = OFFSET_OPTION,
) -> None:
    """List restore points, newest first (ids shortened to 8 characters, which every command accepts)."""
    with client(ctx) as c:
        page = c.list_restore_points(
            machine=machine, job=job, include_removed=include_removed, limit=limit, offset=offset
        )
        render_page(page, as_json, COLUMNS, title="Restore points", names=Names(c), wide=wide)


@app.command("show")
def show(
    ctx: typer.Context, ref: str = typer.Argument(..., help="Id or snapshot id."), as_json: bool = JSON_OPTION
) -> None:
    """Show one restore point."""
    with client(ctx) as c:
        render_object(c.get_restore_point(ref), as_json, title="Restore point", names=Names(c))


@app.command("browse")
def browse(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Restore point id or snapshot id."),
    path: str = typer.Option("/", "--path", help="Folder to list."),
    recursive: bool = typer.Option(False, "--recursive", "-r"),
    pattern: str | None = typer.Option(None, "--pattern", help="Only names matching this glob."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List the files of a restore point."""
    with client(ctx) as c:
        result = c.browse(ref, path, recursive=recursive, pattern=pattern)
    if as_json:
        print_json(result)
        return
    rows = [_Entry(**e) for e in result.entries]
    print_table(
        rows,
        [("type", "type"), ("size", "size", human_size), ("modified", "mtime"), ("path", "path")],
        title=path,
    )


@app.command("search")
def search(
    ctx: typer.Context,
    pattern: str = typer.Argument(..., help="File name glob, or a path glob when it contains /."),
    machine: str | None = typer.Option(None, "--machine", autocompletion=names_of("machine")),
    job: str | None = typer.Option(None, "--job", autocompletion=names_of("job")),
    limit: int = typer.Option(1000, "--limit", min=1, max=10000),
    as_json: bool = JSON_OPTION,
) -> None:
    """Find files across restore points."""
    with client(ctx) as c:
        hits = c.search(pattern, machine=machine, job=job, limit=limit)
        if as_json:
            print_json(hits)
            return
        print_table(
            hits,
            [
                Col("restore point", "restore_point_id", short),
                Col("machine", "machine_id", ref="machine"),
                ("path", "path"),
            ],
            title=f"Files matching {pattern}",
            names=Names(c),
        )


class _Entry(BaseModel):
    model_config = ConfigDict(extra="allow")
    path: str
    type: str = ""
    size: int | None = None
    mtime: Any = None


@app.command("delete")
def delete(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Restore point id or snapshot id."),
    yes: bool = YES_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Forget a restore point in its repository and the catalog (an immutable one is refused)."""
    with client(ctx) as c:
        point = c.get_restore_point(ref)
        if dry_run:
            if as_json:
                print_json({"dry_run": True, "restore_point": point.id, "snapshot_id": point.snapshot_id})
            else:
                console().print(f"would delete restore point {point.id} (snapshot {point.snapshot_id})")
            return
        confirm(f"Delete restore point {point.id} ({point.created_at:%Y-%m-%d %H:%M} UTC)?", yes=yes)
        done = c.delete_restore_point(point.id)
    if as_json:
        print_json(done)
    else:
        success(f"restore point {point.id} deleted: {done.detail} (session {done.session_id})")
