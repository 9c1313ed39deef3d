"""`cloudkeep restore …` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Restore commands.", no_args_is_help=True)
