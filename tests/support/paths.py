"""Paths and folder contents on simulated machines, for byte-for-byte restore checks."""

from __future__ import annotations

import os
from pathlib import Path


def in_machine(host_path: Path) -> str:
    """A simulated machine's path, relative, as the machine names it — what restore points hold."""
    return str(host_path).split("/root/", 1)[1]


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Relative path -> content of every regular file below ``folder``."""
    out = {}
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(dirpath) / name
            out[str(path.relative_to(folder))] = path.read_bytes()
    return out
