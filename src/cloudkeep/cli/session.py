"""`cloudkeep session …` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Session commands.", no_args_is_help=True)
