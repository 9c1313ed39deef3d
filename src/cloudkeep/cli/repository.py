"""`cloudkeep repository …` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Repository commands.", no_args_is_help=True)
