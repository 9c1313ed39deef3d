"""`cloudkeep quickstart …` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Quickstart commands.", no_args_is_help=True)
