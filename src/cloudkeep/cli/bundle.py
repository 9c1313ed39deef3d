"""`cloudkeep bundle …` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Bundle commands.", no_args_is_help=True)
