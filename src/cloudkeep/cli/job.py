"""`cloudkeep job …` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Job commands.", no_args_is_help=True)
