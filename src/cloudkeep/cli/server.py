"""`cloudkeep server …` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Server commands.", no_args_is_help=True)
