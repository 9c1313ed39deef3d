"""Find the CPython 3.9-3.13 interpreters on this machine (pyenv's builds and ``python3.X`` on PATH)."""

from __future__ import annotations

import glob
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MACHINE_PYTHONS = ((3, 9), (3, 10), (3, 11), (3, 12), (3, 13))


@dataclass(frozen=True)
class Python:
    path: Path
    version: tuple[int, int]


def find_pythons() -> list[Python]:
    """One interpreter per minor version 3.9-3.13, pyenv's first; absent versions are simply missing."""
    candidates = sorted(glob.glob("/root/.pyenv/versions/3.*/bin/python"))
    candidates += [w for m in MACHINE_PYTHONS if (w := shutil.which(f"python{m[0]}.{m[1]}"))]
    found: dict[tuple[int, int], Python] = {}
    for candidate in candidates:
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.split()
        except OSError:
            continue
        if len(out) != 2:
            continue
        version = (int(out[0]), int(out[1]))
        if version in MACHINE_PYTHONS and version not in found:
            found[version] = Python(Path(candidate), version)
    return [found[v] for v in sorted(found)]
