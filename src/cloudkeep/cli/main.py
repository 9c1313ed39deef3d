"""The ``cloudkeep`` command: thin Typer commands over the service layer."""

from __future__ import annotations

import typer

app = typer.Typer(name="cloudkeep", help="Backup for cloud machines.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the installed version."""
    from cloudkeep import __version__

    typer.echo(__version__)


if __name__ == "__main__":
    app()
