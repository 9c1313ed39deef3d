"""`cloudkeep restore-point …`: the catalog of restore points."""

from __future__ import annotations

import typer

from cloudkeep.cli.common import JSON_OPTION, LIMIT_OPTION, OFFSET_OPTION, client, render_object, render_page

app = typer.Typer(help="Restore points.", no_args_is_help=True)
COLUMNS = [
    ("id", "id"),
    ("created", "created_at"),
    ("machine", "machine_id"),
    ("mode", "mode"),
    ("files", "files"),
    ("size", "size"),
    ("gfs", "gfs"),
    ("immutable until", "retain_until"),
    ("snapshot", "snapshot_id"),
]


@app.command("list")
def list_(
    ctx: typer.Context,
    machine: str | None = typer.Option(None, "--machine", help="Machine id, cloud id or name."),
    job: str | None = typer.Option(None, "--job", help="Job id or name."),
    include_removed: bool = typer.Option(
        False, "--include-removed", help="Also points removed by retention."
    ),
    as_json: bool = JSON_OPTION,
    limit: int = LIMIT_OPTION,
    offset: int = OFFSET_OPTION,
) -> None:
    """List restore points, newest first."""
    with client(ctx) as c:
        page = c.list_restore_points(
            machine=machine, job=job, include_removed=include_removed, limit=limit, offset=offset
        )
    render_page(page, as_json, COLUMNS, title="Restore points")


@app.command("show")
def show(
    ctx: typer.Context, ref: str = typer.Argument(..., help="Id or snapshot id."), as_json: bool = JSON_OPTION
) -> None:
    """Show one restore point."""
    with client(ctx) as c:
        render_object(c.get_restore_point(ref), as_json, title="Restore point")
