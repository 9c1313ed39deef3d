"""The ``cloudkeep`` command: thin Typer commands over the client, one module per command group.

Embedded by default (the state store under ``--home``); with ``--api-url``/``--token`` (or
``CLOUDKEEP_API_URL``/``CLOUDKEEP_API_TOKEN``) every command talks to a running server instead.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cloudkeep.cli import (
    bundle,
    credential,
    doctor,
    host,
    job,
    machine,
    protection_group,
    quickstart,
    repository,
    restore,
    restore_point,
    server,
    session,
)
from cloudkeep.cli.common import (
    EXIT_CODES_HELP,
    JSON_OPTION,
    CliState,
    CloudkeepGroup,
    build_settings,
    print_json,
)
from cloudkeep.exiting import skip_exit_collection
from cloudkeep.heap import limit_heap_fragmentation

app = typer.Typer(
    name="cloudkeep",
    help="Backup for cloud machines.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    cls=CloudkeepGroup,
    pretty_exceptions_enable=False,
)
app.add_typer(server.app, name="server")
app.add_typer(credential.app, name="credential")
app.add_typer(repository.app, name="repository")
app.add_typer(protection_group.app, name="protection-group")
app.add_typer(machine.app, name="machine")
app.add_typer(job.app, name="job")
app.add_typer(session.app, name="session")
app.add_typer(restore_point.app, name="restore-point")
app.add_typer(restore.app, name="restore")
app.add_typer(bundle.app, name="bundle")
app.add_typer(host.app, name="host")
app.registered_commands += doctor.app.registered_commands  # `cloudkeep doctor`
app.registered_commands += quickstart.app.registered_commands  # `cloudkeep quickstart`


@app.callback()
def main(
    ctx: typer.Context,
    home: Path | None = typer.Option(None, "--home", help="Server state folder (env CLOUDKEEP_HOME)."),
    api_url: str | None = typer.Option(
        None, "--api-url", help="Use a running server's API (env CLOUDKEEP_API_URL) instead of embedded mode."
    ),
    token: str | None = typer.Option(None, "--token", help="API token (env CLOUDKEEP_API_TOKEN)."),
) -> None:
    """Backup for cloud machines."""
    ctx.obj = CliState(build_settings(home, api_url, token))


@app.command()
def version(as_json: bool = JSON_OPTION) -> None:
    """Print the installed version."""
    from cloudkeep import __version__

    if as_json:
        print_json({"version": __version__})
    else:
        typer.echo(__version__)


def run() -> None:
    """The ``cloudkeep`` command (console script): the C heap set up before any thread, the app,
    then an exit without a heap sweep."""
    limit_heap_fragmentation()
    try:
        app()
    finally:
        skip_exit_collection()


if __name__ == "__main__":
    run()
