"""`cloudkeep machine …` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Machine commands.", no_args_is_help=True)
