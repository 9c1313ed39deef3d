"""`cloudkeep protection-group …` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Protection-group commands.", no_args_is_help=True)
