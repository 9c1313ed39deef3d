"""`cloudkeep doctor`: check credentials against the documented permissions and their options."""

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
    """Run each credential's permission and configuration checks and say what to fix."""
    with client(ctx) as c:
        results = c.doctor(credential)
    if not results and not as_json:
        console().print("no credentials yet: add one with `cloudkeep credential add`")
        return
    if render_tests(results, as_json):
        return
    if not as_json:
        out = console()
        for result in results:
            for problem in result.problems:
                out.print(f"[yellow]{result.name}: {problem}[/yellow]")
            if result.hint and not result.ok:  # the hint fits the failure: permissions, network, keys …
                out.print(f"[yellow]{result.name}: {result.hint}[/yellow]")
    raise typer.Exit(1)
