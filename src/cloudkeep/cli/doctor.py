"""`cloudkeep doctor`: check credentials against the documented permissions."""

from __future__ import annotations

import typer

from cloudkeep.cli.common import JSON_OPTION, client, console
from cloudkeep.cli.credential import render_tests

app = typer.Typer(help="Doctor commands.", no_args_is_help=True)


@app.command("doctor")
def doctor(
    ctx: typer.Context,
    credential: str | None = typer.Option(None, "--credential", help="Only this credential (id or name)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run each credential's permission checks and print what is missing (see docs/permissions.md)."""
    with client(ctx) as c:
        results = c.doctor(credential)
    if not results and not as_json:
        console().print("no credentials yet: add one with `cloudkeep credential add`")
        return
    if not render_tests(results, as_json):
        if not as_json:
            console().print("[yellow]grant the missing permissions listed in docs/permissions.md[/yellow]")
        raise typer.Exit(1)
