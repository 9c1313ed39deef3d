"""`cloudkeep machine …`: discovered machines and their deployment steps."""

from __future__ import annotations

import typer

from cloudkeep.cli.common import (
    JSON_OPTION,
    LIMIT_OPTION,
    OFFSET_OPTION,
    WIDE_OPTION,
    Col,
    Column,
    Names,
    client,
    follow,
    print_json,
    print_table,
    render_object,
    render_page,
    short,
)
from cloudkeep.cli.completion import names_of

app = typer.Typer(help="Discovered machines.", no_args_is_help=True)
COLUMNS: list[Column] = [
    ("name", "name"),
    ("platform", "platform"),
    ("region", "region"),
    ("state", "cloud_state"),
    ("status", "status"),
    ("reason", "status_reason"),
    ("agent", "agent_version"),
    ("upgrade", "upgrade_reason"),
    Col("group", "protection_group_id", ref="group", wide=True),
    Col("id", "id", wide=True),
]


@app.command("list")
def list_(
    ctx: typer.Context,
    group: str | None = typer.Option(
        None, "--group", help="Protection group id or name.", autocompletion=names_of("group")
    ),
    status: str | None = typer.Option(None, "--status", help="deployed, skipped, failed …"),
    as_json: bool = JSON_OPTION,
    wide: bool = WIDE_OPTION,
    limit: int = LIMIT_OPTION,
    offset: int = OFFSET_OPTION,
) -> None:
    """List discovered machines with their deployment status."""
    with client(ctx) as c:
        page = c.list_machines(group=group, status=status, limit=limit, offset=offset)
        render_page(page, as_json, COLUMNS, title="Machines", names=Names(c), wide=wide)


@app.command("show")
def show(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Id, cloud id or name.", autocompletion=names_of("machine")),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show a machine and every recorded deployment step."""
    with client(ctx) as c:
        detail = c.get_machine(ref)
        if as_json:
            print_json(detail)
            return
        render_object(detail, False, title=f"Machine {detail.name}", skip=("steps",), names=Names(c))
    print_table(
        detail.steps,
        [
            ("#", "seq"),
            ("step", "step"),
            ("outcome", "outcome"),
            ("detail", "detail"),
            ("at", "at"),
            Col("session", "session_id", short, wide=True),
        ],
        title="Deployment steps",
    )


@app.command("upgrade")
def upgrade(
    ctx: typer.Context,
    refs: list[str] | None = typer.Argument(
        None, help="Machines (id, cloud id or name).", autocompletion=names_of("machine")
    ),
    group: str | None = typer.Option(
        None, "--group", help="Every machine of this protection group.", autocompletion=names_of("group")
    ),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Watch until it ends (always in embedded mode)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Install this server's bundle on machines whose agent is older (even with auto-update off).

    A rescan of just those machines, one per protection group; machines already current are left as
    they are.
    """
    with client(ctx) as c:
        for session_id in c.upgrade_machines(refs or None, group=group):
            follow(c, session_id, wait=wait, as_json=as_json)
