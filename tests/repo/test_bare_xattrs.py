"""A changed folder's unchanged entries that had no xattrs at the last backup skip ``listxattr``
(their stat key, ctime included, is the one the folder's row holds, and setting an xattr moves the
ctime); an entry that had xattrs, or whose key moved, has them read again, and rows written before
the flag existed are still used for their chunks."""

from __future__ import annotations

import errno
import marshal
import os
from pathlib import Path

import pytest

from cloudkeep.repo import Repository, backup_files, fsmeta
from cloudkeep.repo.browse import lookup
from cloudkeep.repo.crypto import ID_SIZE
from cloudkeep.repo.folders import _PreviousRow
from tests.repo.conftest import until_ctime_moves


@pytest.fixture
def xattr_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths whose xattrs were read by path (descriptors of files being read are left out)."""
    read: list[str] = []
    real = fsmeta.read_xattrs

    def counting(target: str | int) -> dict[str, bytes]:
        if isinstance(target, str):
            read.append(os.path.basename(target))
        return real(target)

    monkeypatch.setattr(fsmeta, "read_xattrs", counting)
    return read


def _set_xattr(path: Path, value: bytes) -> None:
    try:
        os.setxattr(path, "user.ck-test", value, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            pytest.skip(f"no user xattrs here: {exc}")
        raise


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "src" / "lib"
    folder.mkdir(parents=True)
    for name in ("plain-a", "plain-b", "tagged", "changed"):
        (folder / name).write_bytes(name.encode() * 100)
    os.symlink("plain-a", folder / "link")
    _set_xattr(folder / "tagged", b"v1")
    return folder


def test_unchanged_entries_without_xattrs_are_not_asked_again(
    repo: Repository, tmp_path: Path, xattr_reads: list[str]
) -> None:
    folder, cache = _folder(tmp_path), tmp_path / "cache"
    backup_files(repo, [folder.parent], cache_dir=cache)
    until_ctime_moves(folder / "changed", lambda: (folder / "changed").write_bytes(b"day 2"))
    xattr_reads.clear()
    snapshot = backup_files(repo, [folder.parent], cache_dir=cache)
    # the entry that had xattrs is asked again; the bare file and symlink are not
    assert "tagged" in xattr_reads
    assert not {"plain-a", "plain-b", "link"} & set(xattr_reads)
    tagged = lookup(repo, snapshot.id, str(folder / "tagged"))
    assert tagged.xattrs == {"user.ck-test": b"v1"}
    assert lookup(repo, snapshot.id, str(folder / "plain-a")).xattrs == {}
    assert lookup(repo, snapshot.id, str(folder / "link")).target == "plain-a"
    assert snapshot.stats["bytes_read"] == len(b"day 2")


def test_an_entry_that_gained_or_changed_xattrs_is_read_again(
    repo: Repository, tmp_path: Path, xattr_reads: list[str]
) -> None:
    folder, cache = _folder(tmp_path), tmp_path / "cache"
    backup_files(repo, [folder.parent], cache_dir=cache)
    until_ctime_moves(folder / "plain-a", lambda: _set_xattr(folder / "plain-a", b"new"))
    until_ctime_moves(folder / "tagged", lambda: _set_xattr(folder / "tagged", b"v2"))
    snapshot = backup_files(repo, [folder.parent], cache_dir=cache)  # both are read again (new ctime)
    assert lookup(repo, snapshot.id, str(folder / "plain-a")).xattrs == {"user.ck-test": b"new"}
    assert lookup(repo, snapshot.id, str(folder / "tagged")).xattrs == {"user.ck-test": b"v2"}
    # and the next backup (the folder changed again) knows plain-a has xattrs now
    until_ctime_moves(folder / "changed", lambda: (folder / "changed").write_bytes(b"day 3"))
    xattr_reads.clear()
    snapshot = backup_files(repo, [folder.parent], cache_dir=cache)
    assert "plain-a" in xattr_reads and "plain-b" not in xattr_reads
    assert lookup(repo, snapshot.id, str(folder / "plain-a")).xattrs == {"user.ck-test": b"new"}


def test_rows_without_the_flag_still_give_chunks_and_bad_entries_are_dropped() -> None:
    key = ("name", 0o100644, 1, 2)
    chunk = b"c" * ID_SIZE
    rows = [
        (key, chunk),  # an older row: chunks, xattrs unknown
        (("bare",), chunk, True),
        (("link",), None, True),  # not a file: no chunks, but the flag
        (("odd",), b"short", True),  # chunk ids of the wrong length
        (("flag",), chunk, "yes"),  # not a bool
        ("not a tuple",),
    ]
    found = _PreviousRow(marshal.dumps(rows, 2)).found
    assert found == {
        "name": (key, chunk, False),
        "bare": (("bare",), chunk, True),
        "link": (("link",), None, True),
    }
