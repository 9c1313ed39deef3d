"""Small files take a short path (read whole, no chunker): their chunks must
be exactly the chunker's, so the repository format and dedup against older backups are unchanged,
even for a file that grows between its stat and its read."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from cloudkeep.repo import Repository, backup_files, cat_file
from cloudkeep.repo import archiver as archiver_module
from cloudkeep.repo.browse import lookup
from cloudkeep.repo.chunker import StreamCutter


def _cat(repo: Repository, snapshot_id: str, path: Path) -> bytes:
    out = io.BytesIO()
    cat_file(repo, snapshot_id, str(path), out)
    return out.getvalue()


def _chunk_ids(repo: Repository, data: bytes) -> list[bytes]:
    """What the chunker makes of ``data``: the ids a backup must record."""
    cutter = StreamCutter(repo.config.chunker)
    return [repo.crypter.content_id(bytes(c)) for c in cutter.cut(io.BytesIO(data))]


def test_files_around_the_minimum_chunk_match_the_chunker(repo: Repository, tmp_path: Path) -> None:
    low = repo.config.chunker.min_size
    sizes = [1, 100, 4096, low - 1, low, low + 1, 5 * low]
    rng = random.Random(3)
    src = tmp_path / "src"
    src.mkdir()
    contents = {f"f{size}": rng.randbytes(size) for size in sizes}
    for name, data in contents.items():
        (src / name).write_bytes(data)
    snap = backup_files(repo, [src], hostname="h")
    assert snap.stats["bytes_read"] == sum(sizes)
    for name, data in contents.items():
        node = lookup(repo, snap.id, str(src / name))
        assert node.content == _chunk_ids(repo, data), name
        assert node.size == len(data)
        assert _cat(repo, snap.id, src / name) == data


def test_a_small_file_that_grew_since_its_stat_is_chunked_whole(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk's stat sees 10 bytes; by the time the file is read it holds several minimum chunks."""
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(4).randbytes(2 * repo.config.chunker.max_size + 123)
    (src / "growing").write_bytes(data[:10])
    real_stat = os.stat

    def stat_then_grow(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        st = real_stat(name, *args, **kwargs)
        if name == "growing":
            (src / "growing").write_bytes(data)  # an application writes right after the walk looked
        return st

    monkeypatch.setattr(archiver_module.os, "stat", stat_then_grow)
    snap = backup_files(repo, [src], hostname="h")
    monkeypatch.undo()
    node = lookup(repo, snap.id, str(src / "growing"))
    assert node.content == _chunk_ids(repo, data) and len(node.content) > 1
    assert _cat(repo, snap.id, src / "growing") == data
