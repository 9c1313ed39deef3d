"""The small files a large folder leaves in the walk's last batch go to the pool as soon as the
walk has taken the folder's last entry, not once the next folder's files fill the batch: the
folder (every entry, its stat key and chunk list) is let go sooner, before a next large folder is
stat'ed whole beside it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudkeep.repo import Repository, archiver, backup_files
from cloudkeep.repo.archiver import _Archiver
from cloudkeep.repo.filecontent import PendingFile
from cloudkeep.repo.folders import Entry, Folder


@pytest.mark.parametrize("large", [True, False])
def test_a_large_folders_last_files_go_before_the_next_folder_is_listed(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large: bool
) -> None:
    monkeypatch.setattr(archiver, "FLUSH_FOLDER", 8 if large else 10_000)
    source = tmp_path / "src"
    for box, count in (("a", 10), ("b", 10)):
        (source / box).mkdir(parents=True)
        for i in range(count):
            (source / box / f"{i:02}.mail").write_bytes(f"{box} message {i}\n".encode())
    events: list[str] = []
    listing, submit = _Archiver.listing, _Archiver.submit

    def listing_spy(self: _Archiver, folder: Folder, base: str) -> list[Entry] | Iterator[Entry]:
        events.append(f"list {base.rsplit('/', 1)[-1]}")
        return listing(self, folder, base)

    def submit_spy(self: _Archiver, files: list[PendingFile]) -> None:
        events.append("send " + "".join(sorted({f.path.split("/")[-2] for f in files})))
        submit(self, files)

    monkeypatch.setattr(_Archiver, "listing", listing_spy)
    monkeypatch.setattr(_Archiver, "submit", submit_spy)
    snapshot = backup_files(repo, [source], processes=False, threads=1)
    assert snapshot.stats["files"] == 20
    at = events.index("list b")
    if large:  # a's ten files were sent on their own, before b was listed
        assert "send a" in events[:at] and "send ab" not in events
    else:  # a small folder's files wait for the next folder's
        assert "send a" not in events[:at] and "send ab" in events


@pytest.mark.parametrize("threshold", [10, 11])
def test_the_walk_lists_on_once_a_large_folder_it_left_is_stored(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threshold: int
) -> None:
    """A folder of ``LARGE_FOLDER`` entries is stored (its tree, row and their sealing) before the
    walk lists the next folder: listed meanwhile, both were in memory at once. A smaller one does
    not hold the walk (its files are read as the next folder is listed)."""
    monkeypatch.setattr(archiver, "LARGE_FOLDER", threshold)
    source = tmp_path / "src"
    for box in ("a", "b"):
        (source / box).mkdir(parents=True)
        for i in range(10):
            (source / box / f"{i:02}.mail").write_bytes(f"{box} message {i}\n".encode() * (1000 + i))
    events: list[str] = []
    listing, tree = _Archiver.listing, Folder._tree

    def listing_spy(self: _Archiver, folder: Folder, base: str) -> list[Entry] | Iterator[Entry]:
        events.append(f"list {base.rsplit('/', 1)[-1]}")
        return listing(self, folder, base)

    def tree_spy(self: Folder) -> bytes:
        tree_id = tree(self)
        events.append(f"stored {self.path.rsplit('/', 1)[-1]}")
        return tree_id

    monkeypatch.setattr(_Archiver, "listing", listing_spy)
    monkeypatch.setattr(Folder, "_tree", tree_spy)
    snapshot = backup_files(repo, [source], processes=False, threads=1)
    assert snapshot.stats["files"] == 20
    if threshold == 10:  # "a" is large: stored before "b" was listed
        assert events.index("stored a") < events.index("list b")
    else:
        assert {"stored a", "list b"} <= set(events)
