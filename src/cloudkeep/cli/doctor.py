"""`cloudkeep doctor …` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Doctor commands.", no_args_is_help=True)
