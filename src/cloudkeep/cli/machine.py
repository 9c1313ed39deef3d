"""`cloudkeep machine …`: discovered machines and their deployment steps."""

from __future__ import annotations

import typer

from cloudkeep.cli.common import (
    JSON_OPTION,
    LIMIT_OPTION,
    OFFSET_OPTION,
    client,
    print_json,
    print_table,
    render_object,
    render_page,
)

app = typer.Typer(help="Discovered machines.", no_args_is_help=True)
COLUMNS = [
    ("name", "name"),
    ("platform", "platform"),
    ("region", "region"),
    ("state", "cloud_state"),
    ("status", "status"),
    ("reason", "status_reason"),
    ("agent", "agent_version"),
    ("id", "id"),
]


@app.command("list")
def list_(
    ctx: typer.Context,
    group: str | None = typer.Option(None, "--group", help="Protection group id or name."),
    status: str | None = typer.Option(None, "--status", help="deployed, skipped, failed …"),
    as_json: bool = JSON_OPTION,
    limit: int = LIMIT_OPTION,
    offset: int = OFFSET_OPTION,
) -> None:
    """List discovered machines with their deployment status."""
    with client(ctx) as c:
        page = c.list_machines(group=group, status=status, limit=limit, offset=offset)
    render_page(page, as_json, COLUMNS, title="Machines")


@app.command("show")
def show(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id, cloud id or name."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show a machine and every recorded deployment step."""
    with client(ctx) as c:
        detail = c.get_machine(ref)
    if as_json:
        print_json(detail)
        return
    render_object(detail, False, title=f"Machine {detail.name}", skip=("steps",))
    print_table(
        detail.steps,
        [("#", "seq"), ("step", "step"), ("outcome", "outcome"), ("detail", "detail"), ("at", "at")],
        title="Deployment steps",
    )
