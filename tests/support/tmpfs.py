"""A small real file system (tmpfs) that a test can fill, shrink, grow and make read-only.

No peer refuses writes on demand the way a full or read-only disk does; the kernel's own tmpfs
does, for real (ENOSPC, EROFS), and can be resized or remounted without losing its files.
Mounting needs root (or CAP_SYS_ADMIN): elsewhere the tests that use it are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


class Tmpfs:
    """A mounted tmpfs at ``path``: ``resize`` and ``read_only`` keep its content."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True, capture_output=True)

    def resize(self, size: str) -> None:
        self._remount(f"size={size}")

    def read_only(self, on: bool = True) -> None:
        self._remount("ro" if on else "rw")


def mountable() -> str | None:
    """Why a tmpfs cannot be mounted here, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    return None


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    """A 4 MiB tmpfs, unmounted after the test."""
    why = mountable()
    if why:
        pytest.skip(why)
    path = tmp_path / "tmpfs"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "cloudkeep-test", str(path)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield Tmpfs(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
