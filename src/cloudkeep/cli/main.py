"""The ``cloudkeep`` command: thin Typer commands over the service layer, one module per command group."""

from __future__ import annotations

import typer

from cloudkeep.cli import (
    bundle,
    credential,
    doctor,
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

app = typer.Typer(name="cloudkeep", help="Backup for cloud machines.", no_args_is_help=True)
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
app.registered_commands += doctor.app.registered_commands  # `cloudkeep doctor`
app.registered_commands += quickstart.app.registered_commands  # `cloudkeep quickstart`


@app.command()
def version() -> None:
    """Print the installed version."""
    from cloudkeep import __version__

    typer.echo(__version__)


if __name__ == "__main__":
    app()
