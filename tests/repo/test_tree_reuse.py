"""A folder whose entries are all unchanged reuses its last tree blob and carries its files' cache
rows (no-change reruns skip nodes, xattr reads, row lookups and serialisation); any change of one
entry's xattrs, mode, mtime or name rebuilds that folder's tree (and its parents'), the restore point
shows the change, and nothing is reused whose chunks left the index."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from cloudkeep.repo import Repository, backup_files, folders, restore
from cloudkeep.repo.browse import lookup
from cloudkeep.repo.tree import Node, encode_tree

from .conftest import built_only_above, restored, subtree_of, until_ctime_moves, write_tree


@pytest.fixture
def trees_built(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The entry names of every tree the archiver serialises (i.e. does not reuse)."""
    built: list[list[str]] = []

    def counting(nodes: Iterable[Node], *, ordered: bool = False) -> bytearray:
        nodes = list(nodes)
        built.append(sorted(n.name for n in nodes))
        return encode_tree(nodes, ordered=ordered)

    monkeypatch.setattr(folders, "encode_tree", counting)
    return built


def _source(tmp_path: Path) -> Path:
    source = write_tree(tmp_path / "src")
    (source / "other" / "x").mkdir(parents=True)
    (source / "other" / "x" / "untouched.txt").write_text("same\n")
    return source


def test_no_change_rerun_reuses_every_tree(
    repo: Repository, tmp_path: Path, trees_built: list[list[str]]
) -> None:
    source, cache = _source(tmp_path), tmp_path / "cache"
    first = backup_files(repo, [source], cache_dir=cache)
    assert trees_built, "the first backup builds its trees"
    trees_built.clear()
    second = backup_files(repo, [source], cache_dir=cache)
    # Nothing of the source is serialised again; the folders above it (/tmp...) change with other processes.
    assert built_only_above(trees_built, source)
    assert subtree_of(repo, second.tree, source) == subtree_of(repo, first.tree, source)
    target = tmp_path / "restore"
    restore(repo, second.id, target)
    out = restored(target, source)
    notes = "docs/deep/er/notes.md"
    assert (out / notes).read_text() == (source / notes).read_text()
    assert os.readlink(out / "link-to-readme") == "docs/readme.txt"
    assert os.stat(out / "script.sh").st_mode & 0o777 == 0o750


def _set_xattr(path: Path) -> None:
    try:
        os.setxattr(path, "user.ck-test", b"v2")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            pytest.skip(f"no user xattrs here: {exc}")
        raise


def _changes(path: Path) -> dict[str, tuple[Callable[[], None], Callable[[Node], bool]]]:
    """How to change ``path`` (a file or folder) in place, and how its node then shows it."""
    mtime = os.lstat(path).st_mtime_ns + 7 * 10**9
    return {
        "xattr": (lambda: _set_xattr(path), lambda n: n.xattrs.get("user.ck-test") == b"v2"),
        "mode": (lambda: os.chmod(path, 0o700), lambda n: n.mode == 0o700),
        "mtime": (lambda: os.utime(path, ns=(mtime, mtime)), lambda n: n.mtime_ns == mtime),
    }


@pytest.mark.parametrize("change", ["xattr", "mode", "mtime", "rename"])
@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_changed_entry_rebuilds_its_folder_and_parents_only(
    repo: Repository, tmp_path: Path, trees_built: list[list[str]], what: str, change: str
) -> None:
    source, cache = _source(tmp_path), tmp_path / "cache"
    # the file docs/deep/er/notes.md (folder "er" lists it) or the folder er (folder "deep" lists it)
    entry = source / "docs" / "deep" / "er" / ("notes.md" if what == "file" else "")
    entry = entry if what == "file" else entry.parent / "er"
    backup_files(repo, [source], cache_dir=cache)
    backup_files(repo, [source], cache_dir=cache)  # both generations of the cache know every folder
    trees_built.clear()
    apply, shows = _changes(entry).get(change, (lambda: None, lambda n: True))
    renamed = entry.with_name("renamed")
    if change == "rename":
        os.rename(entry, renamed)
    else:
        until_ctime_moves(entry, apply)
    snapshot = backup_files(repo, [source], cache_dir=cache)
    if change == "rename":
        assert [renamed.name] in trees_built
        listing = repo.load_tree(lookup(repo, snapshot.id, str(entry.parent)).subtree or b"")
        assert [n.name for n in listing] == [renamed.name]
    else:
        assert [entry.name] in trees_built  # the folder listing the entry
        assert shows(lookup(repo, snapshot.id, str(entry)))
    assert ["deep", "readme.txt"] in trees_built  # its parents
    assert ["untouched.txt"] not in trees_built and ["x"] not in trees_built  # a sibling: reused
    assert snapshot.stats["files_unchanged"] >= 6  # the other files were not read again


def test_a_replaced_symlink_rebuilds_its_folder(
    repo: Repository, tmp_path: Path, trees_built: list[list[str]]
) -> None:
    """Symlinks have no file-cache row: only the folder's signature sees a new target (of the
    same length, likely on the freed inode) through the link's ctime."""
    source, cache = _source(tmp_path), tmp_path / "cache"
    link = source / "link-to-readme"
    backup_files(repo, [source], cache_dir=cache)
    backup_files(repo, [source], cache_dir=cache)

    def relink() -> None:
        os.unlink(link)
        os.symlink("docs/README.txt", link)

    until_ctime_moves(link, relink)
    snapshot = backup_files(repo, [source], cache_dir=cache)
    assert lookup(repo, snapshot.id, str(link)).target == "docs/README.txt"


def _change_notes(source: Path) -> Path:
    notes = source / "docs" / "deep" / "er" / "notes.md"
    until_ctime_moves(notes, lambda: notes.write_text("# notes, day 2\n"))
    return notes


def test_a_rebuilt_unchanged_listing_takes_its_files_from_its_folder_row(
    repo: Repository, tmp_path: Path, trees_built: list[list[str]]
) -> None:
    """A folder whose listing was unchanged wrote no file rows: when a later change below it
    rebuilds it (docs, above the changed file), its files' chunks come from the folder's row (their
    stat keys are the ones stored there), and none of them is read."""
    source, cache = _source(tmp_path), tmp_path / "cache"
    for _ in range(3):
        backup_files(repo, [source], cache_dir=cache)
    notes = _change_notes(source)
    trees_built.clear()
    snapshot = backup_files(repo, [source], cache_dir=cache)
    assert ["deep", "readme.txt"] in trees_built
    assert snapshot.stats["bytes_read"] == notes.stat().st_size  # only the changed file was read
    assert snapshot.stats["files_unchanged"] == snapshot.stats["files"] - 1
    readme = lookup(repo, snapshot.id, str(source / "docs" / "readme.txt"))
    assert readme.content and readme.size == (source / "docs" / "readme.txt").stat().st_size


def test_a_rebuilt_folder_reads_its_files_when_the_cache_lost_them(
    repo: Repository, tmp_path: Path, trees_built: list[list[str]]
) -> None:
    source, cache = _source(tmp_path), tmp_path / "cache"
    for _ in range(2):
        backup_files(repo, [source], cache_dir=cache)
    readme = source / "docs" / "readme.txt"
    (db,) = cache.rglob("files-*.sqlite")
    with sqlite3.connect(db) as conn:  # damaged stat keys: the folder's listing still matches
        changed = conn.execute("UPDATE folders SET keys = x'00' WHERE path = ?", (str(readme.parent),))
        assert changed.rowcount == 1
        assert conn.execute("SELECT count(*) FROM files WHERE path = ?", (str(readme),)).fetchone() == (0,)
    notes = _change_notes(source)
    snapshot = backup_files(repo, [source], cache_dir=cache)
    assert snapshot.stats["bytes_read"] == notes.stat().st_size + readme.stat().st_size
    assert snapshot.stats["files_unchanged"] == snapshot.stats["files"] - 2
    target = tmp_path / "restore"
    restore(repo, snapshot.id, target)
    assert (restored(target, source) / "docs" / "readme.txt").read_bytes() == readme.read_bytes()
    # and the row is back: the next rebuild of docs reads nothing but the changed file
    until_ctime_moves(notes, lambda: notes.write_text("# notes, day 3\n"))
    assert backup_files(repo, [source], cache_dir=cache).stats["bytes_read"] == notes.stat().st_size


def test_a_folder_whose_chunks_left_the_index_is_not_reused(
    repo: Repository, tmp_path: Path, trees_built: list[list[str]]
) -> None:
    """Prune may keep an unused tree while deleting its files' pack: an unchanged folder is
    reused only when every chunk of its files is still indexed, else its files are read again."""
    source, cache = _source(tmp_path), tmp_path / "cache"
    for _ in range(2):
        backup_files(repo, [source], cache_dir=cache)
    readme = source / "docs" / "readme.txt"
    first = backup_files(repo, [source], cache_dir=cache)
    (chunk,) = lookup(repo, first.id, str(readme)).content
    location = repo.index.get(chunk)
    assert location is not None
    with repo.lock:
        repo.index.remove_packs({location.pack_id})
    trees_built.clear()
    snapshot = backup_files(repo, [source], cache_dir=cache)
    assert ["deep", "readme.txt"] in trees_built
    assert snapshot.stats["bytes_read"] >= readme.stat().st_size
    assert all(repo.has_blob(c) for c in lookup(repo, snapshot.id, str(readme)).content)


def test_a_folders_nodes_are_made_as_its_tree_encoder_takes_them(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder's nodes never all exist at once (a maildir folder of 50,000 messages held ~15 MiB
    of them): when the encoder takes its i-th node, that folder has made i, on a first backup (files
    read anew) and on an incremental (unchanged files' entries become nodes only then)."""
    source, cache = tmp_path / "src", tmp_path / "cache"
    (source / "many").mkdir(parents=True)
    for i in range(40):
        (source / "many" / f"m{i:02}.txt").write_text(f"message {i}\n")
    made = threading.local()  # trees of different folders may be built at once, on other threads
    real_node, real_encode = folders.Folder._node, folders.encode_tree
    seen: list[list[int]] = []

    def node(self: folders.Folder, child: Node | folders.Entry | None) -> Node | None:
        made.count += 1
        return real_node(self, child)

    def encode(nodes: Iterable[Node], *, ordered: bool = False) -> bytearray:
        made.count, at = 0, []

        def taken() -> Iterable[Node]:
            for n in nodes:
                at.append(made.count)
                yield n

        out = real_encode(taken(), ordered=ordered)
        seen.append(at)
        return out

    monkeypatch.setattr(folders.Folder, "_node", node)
    monkeypatch.setattr(folders, "encode_tree", encode)
    for day in (1, 2):
        seen.clear()
        backup_files(repo, [source], cache_dir=cache)
        assert [1, *range(2, 41)] in seen, (
            f"day {day}: the 40 files' folder was not encoded as its nodes were made"
        )
        (source / "many" / "m07.txt").write_text("changed\n")
