"""Paths on simulated machines as the machines themselves name them."""

from __future__ import annotations

from pathlib import Path


def in_machine(host_path: Path) -> str:
    """A simulated machine's path, relative, as the machine names it — what restore points hold."""
    return str(host_path).split("/root/", 1)[1]
