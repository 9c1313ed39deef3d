"""`cloudkeep credential …` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Credential commands.", no_args_is_help=True)
