"""Volume-level backup of a disk image file (no loop device needed) and restore to an image."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from cloudkeep.errors import ConfigurationError
from cloudkeep.repo import Repository, backup_files, backup_volume, list_tree, restore_volume


def make_image(path: Path, size: int = 24 * 2**20) -> Path:
    rng = random.Random(3)
    with open(path, "wb") as fh:
        fh.truncate(size)  # mostly zeros, like a fresh file system
        for offset in (0, 5 * 2**20, 17 * 2**20):
            fh.seek(offset)
            fh.write(rng.randbytes(2**20))
    return path


def test_volume_roundtrip_and_incremental(repo: Repository, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img")
    progress: list[object] = []
    first = backup_volume(repo, image, hostname="vm1", progress=progress.append)
    assert first.kind == "volume" and first.paths == [str(image)] and progress
    assert first.stats["bytes_total"] == image.stat().st_size
    assert first.stats["bytes_stored"] < 4 * 2**20  # zeros dedup/compress away
    [entry] = list(list_tree(repo, first.id, "/"))
    assert entry.path == "/disk.img" and entry.size == image.stat().st_size

    with open(image, "r+b") as fh:  # change 64 KiB in the middle
        fh.seek(12 * 2**20)
        fh.write(os.urandom(64 * 1024))
    second = backup_volume(repo, image, hostname="vm1")
    assert second.stats["bytes_new"] < 1 * 2**20

    out = tmp_path / "restored.img"
    result = restore_volume(repo, second.id, out)
    assert out.read_bytes() == image.read_bytes()
    assert result.verified == 1 and result.bytes == image.stat().st_size
    assert out.stat().st_blocks * 512 < image.stat().st_size  # restored sparse


def test_restore_volume_rejects_file_snapshot(repo: Repository, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    snap = backup_files(repo, [tmp_path / "f"], hostname="h")
    with pytest.raises(ConfigurationError, match="not a volume"):
        restore_volume(repo, snap.id, tmp_path / "out.img")


def test_volume_must_be_device_or_image(repo: Repository, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="neither"):
        backup_volume(repo, tmp_path, hostname="h")
