"""`cloudkeep restore-point …` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Restore-point commands.", no_args_is_help=True)
