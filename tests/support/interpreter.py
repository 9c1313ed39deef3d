"""A script in a new interpreter with this checkout's sources: for what a test process (which has
long since imported everything, and never exits) cannot show — imports at start, a process's exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def fresh_interpreter(script: str, cwd: Path | None = None, timeout: float = 60) -> list[str]:
    """Run ``script`` with ``python -c``: its output lines (exit 0 or its stderr fails the test)."""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()
