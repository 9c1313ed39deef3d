"""Restore points crafted by a hostile machine: restore must never create or change anything
outside its target, and every refused entry must be an error of the restore, named.

Each case writes tree blobs by hand (``tests.support.hostile``), restores into a target three
levels inside an ``outside`` folder holding victims, and compares ``outside`` before and after.
Absolute names point into ``outside`` rather than ``/etc`` so that the suite is harmless even
against a restorer that follows them.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudkeep.errors import ConfigurationError, IntegrityError, NotFoundError
from cloudkeep.repo import Repository, restore, tree
from cloudkeep.repo.pack import TREE
from tests.support.hostile import Crafter, craft, fifo, file, folder, sandbox, symlink

# Every test twice: on threads alone, and with the worker process writing too (conftest).
pytestmark = pytest.mark.usefixtures("restore_worker")


@dataclass
class Case:
    specs: Callable[[Path], list[dict]]  # given ``outside``
    refused: list[str]  # names (as they appear in the restore's errors) that must be reported
    setup: Callable[[Path, Path], None] | None = None  # (outside, target) before the restore
    check: Callable[[Path], None] | None = None  # on the target afterwards
    unlinks_outside: bool = False  # the target held a hard link to an outside file: its count drops


def _link_pair(first: str, second: str) -> list[dict]:
    common = {"links": 2, "inode": 77, "device": 5}
    return [file(first, b"evil\n", **common), file(second, b"evil\n", **common)]


def _existing_symlink_dir(outside: Path, target: Path) -> None:
    os.symlink(outside / "victim-dir", target / "d")


def _existing_symlink_file(outside: Path, target: Path) -> None:
    os.symlink(outside / "victim.txt", target / "f")


def _existing_hardlink(outside: Path, target: Path) -> None:
    os.link(outside / "victim-linked.txt", target / "hl")


def _replaced_by_a_file(name: str, data: bytes) -> Callable[[Path], None]:
    def check(target: Path) -> None:
        st = os.lstat(target / name)
        assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1
        assert (target / name).read_bytes() == data

    return check


def _first_entries_restored(folder: Path, names: list[str]) -> None:
    assert sorted(os.listdir(folder)) == names
    assert all((folder / name).read_bytes() == b"evil\n" for name in names)  # not a second entry's


def _without_link_counts(state: dict[str, tuple]) -> dict[str, tuple]:
    return {path: entry[:5] + entry[6:] for path, entry in state.items()}


CASES: dict[str, Case] = {
    "dotdot-file": Case(lambda o: [file("..")], [".."]),
    "dot-file": Case(lambda o: [file(".")], ["."]),
    "parent-name": Case(lambda o: [file("../../../victim.txt")], ["../../../victim.txt"]),
    "dotdot-inside-name": Case(lambda o: [file("a/../../../../victim.txt")], ["a/../../../../victim.txt"]),
    "absolute-name": Case(lambda o: [file(f"{o}/abs.txt")], ["/abs.txt"]),
    "empty-name": Case(lambda o: [file("")], ["''"]),
    "nul-in-name": Case(lambda o: [file("x\0y")], ["x\\x00y"]),
    "slash-in-name": Case(lambda o: [folder("sub", []), file("sub/x")], ["sub/x"]),
    "unencodable-name": Case(lambda o: [file("bad\ud800")], ["bad"]),
    "dotdot-dir-with-children": Case(
        lambda o: [folder("..", [folder("..", [folder("..", [file("victim.txt")])])])], [".."]
    ),
    "symlink-then-file": Case(
        lambda o: [symlink("s", f"{o}/victim.txt"), file("s", b"overwritten\n", mode=0o777)], ["s"]
    ),
    "symlink-then-dir": Case(
        lambda o: [symlink("s", f"{o}/victim-dir"), folder("s", [file("planted")])], ["s"]
    ),
    "symlink-then-fifo": Case(lambda o: [symlink("s", f"{o}/victim.txt"), fifo("s")], ["s"]),
    "symlink-then-hardlink": Case(
        lambda o: [
            file("f", links=2, inode=9, device=1),
            symlink("s", f"{o}/victim.txt"),
            file("s", links=2, inode=9, device=1),
        ],
        ["s"],
    ),
    "symlink-dir-then-entries-through-it": Case(
        lambda o: [symlink("d", f"{o}/victim-dir"), folder("d", [file("x")]), file("d/y")], ["d", "d/y"]
    ),
    "hardlink-first-outside": Case(
        lambda o: _link_pair("../../../victim.txt", "inside"),
        ["../../../victim.txt"],
        check=_replaced_by_a_file("inside", b"evil\n"),
    ),
    "hardlink-first-in-refused-dir": Case(
        lambda o: [
            folder("..", [file("victim-linked.txt", links=2, inode=3, device=1)]),
            file("z", links=2, inode=3, device=1),
        ],
        [".."],
        check=_replaced_by_a_file("z", b"evil\n"),
    ),
    "symlink-metadata-stays-on-link": Case(
        lambda o: [
            symlink(
                "l",
                f"{o}/victim.txt",
                mode=0o777,
                mtime_ns=7,
                uid=4242,
                gid=4242,
                xattrs={"user.planted": b"x".hex()},
            )
        ],
        [],
    ),
    # Trees list names in order (``encode_tree``); another writer's need not, and a second entry of
    # a name may come anywhere after a name out of order: restore keeps names only from there on.
    "same-name-after-names-out-of-order": Case(
        lambda o: [folder("d", [file("m"), file("a"), file("z"), file("a", b"second\n"), file("b")])],
        ["/d/a: refused: a second entry"],
        check=lambda target: _first_entries_restored(target / "d", ["a", "b", "m", "z"]),
    ),
    "same-name-next-to-it": Case(
        lambda o: [folder("d", [file("a"), file("c"), file("c", b"second\n")])],
        ["/d/c: refused: a second entry"],
    ),
    "names-not-strings-beside-a-second-entry": Case(
        lambda o: [folder("d", [{"name": 5, "type": "file"}, file("a"), file("c"), file("c", b"second\n")])],
        ["/d/5: refused: name is not a string", "/d/c: refused: a second entry"],
        check=lambda target: _first_entries_restored(target / "d", ["a", "c"]),
    ),
    "names-of-no-order": Case(
        lambda o: [
            folder(
                "d", [file("b"), {"name": ["x"], "type": "file"}, file("a"), {"name": None, "type": "file"}]
            )
        ],
        ["/d/['x']: refused: name is not a string", "/d/None: refused: name is not a string"],
        check=lambda target: _first_entries_restored(target / "d", ["a", "b"]),
    ),
    "unknown-entry-type": Case(lambda o: [{"name": "x", "type": "socket", "mode": 0o777}], ["/x"]),
    "folder-without-listing": Case(lambda o: [{"name": "d", "type": "dir", "mode": 0o777}], ["/d"]),
    "unknown-chunk": Case(
        lambda o: [{"name": "f", "type": "file", "content": ["ab" * 32], "size": 5}, file("g")], ["/f"]
    ),
    "symlink-with-nul-target": Case(lambda o: [symlink("l", "/etc\0passwd")], ["/l"]),
    "in-place-parent-is-symlink": Case(
        lambda o: [folder("d", [file("planted")])], ["d"], setup=_existing_symlink_dir
    ),
    "in-place-file-is-symlink": Case(
        lambda o: [file("f", b"restored\n", mode=0o777)],
        [],
        setup=_existing_symlink_file,
        check=_replaced_by_a_file("f", b"restored\n"),
    ),
    "in-place-file-is-hardlink-to-outside": Case(
        lambda o: [file("hl", b"restored\n", mode=0o777)],
        [],
        setup=_existing_hardlink,
        check=_replaced_by_a_file("hl", b"restored\n"),
        unlinks_outside=True,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_crafted_restore_point_stays_inside_target(repo: Repository, tmp_path: Path, name: str) -> None:
    case = CASES[name]
    outside, target, state = sandbox(tmp_path)
    if case.setup:
        case.setup(outside, target)
    snapshot_id = craft(repo, case.specs(outside))
    before = state()
    result = restore(repo, snapshot_id, target)
    after = state()
    if case.unlinks_outside:
        before, after = _without_link_counts(before), _without_link_counts(after)
    assert after == before, "the restore changed something outside its target"
    errors = getattr(result, "errors", [])
    for refused in case.refused:
        assert any(refused in error for error in errors), (refused, errors)
    if case.refused:
        assert not result.ok
    else:
        assert errors == []
    if case.check:
        case.check(target)


def test_good_entries_beside_hostile_ones_are_restored(repo: Repository, tmp_path: Path) -> None:
    _outside, target, state = sandbox(tmp_path)
    snapshot_id = craft(repo, [file("../../../victim.txt"), folder("ok", [file("good", b"fine\n")]),
                               file("zz", b"also fine\n")])  # fmt: skip
    before = state()
    result = restore(repo, snapshot_id, target)
    assert state() == before
    assert (target / "ok" / "good").read_bytes() == b"fine\n"
    assert (target / "zz").read_bytes() == b"also fine\n"
    assert result.files == 2 and len(result.errors) == 1 and "../../../victim.txt" in result.errors[0]


@pytest.mark.parametrize("path", ["/../..", "/..", "/ok/../../..", "/./../x"])
def test_requested_paths_cannot_climb(repo: Repository, tmp_path: Path, path: str) -> None:
    _outside, target, state = sandbox(tmp_path)
    snapshot_id = craft(repo, [folder("..", [folder("..", [file("victim.txt")])]), folder("ok", [])])
    before = state()
    with pytest.raises((ConfigurationError, NotFoundError)):
        restore(repo, snapshot_id, target, paths=[path])
    assert state() == before


def test_restore_point_of_one_bad_name_still_lists(repo: Repository) -> None:
    """A bad name is a restore error, not a crash of browsing the restore point."""
    from cloudkeep.repo import list_tree

    snapshot_id = craft(repo, [file("../x"), file("fine")])
    assert sorted(e.path for e in list_tree(repo, snapshot_id, "/")) == ["/../x", "/fine"]


UNOWNABLE = {"name": "c", "type": "file", "user": 7}  # no node can be made of it: an owner is a name


def test_a_large_listing_bad_halfway_restores_what_comes_before_it(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large folder's listing is read a node at a time (``tree.STREAM_TREE``): a node that
    cannot be made halfway is an error of its folder, named after the last entry before it; those
    entries are restored (as one parse of the whole listing gives them), the rest not."""
    monkeypatch.setattr(tree, "STREAM_TREE", 0)  # every listing read a node at a time
    _outside, target, state = sandbox(tmp_path)
    snapshot_id = craft(
        repo,
        [
            folder(
                "d",
                [file("a", b"a\n"), file("b", b"b\n"), {"name": "c", "type": "file", "user": 7}, file("e")],
            ),
            file("ok", b"ok\n"),
        ],
    )
    before = state()
    result = restore(repo, snapshot_id, target)
    assert state() == before
    assert (target / "ok").read_bytes() == b"ok\n"
    assert sorted(os.listdir(target / "d")) == ["a", "b"]
    assert (target / "d" / "b").read_bytes() == b"b\n"
    assert len(result.errors) == 1 and result.errors[0].startswith("/d: cannot read its listing past b ("), (
        result.errors
    )


def test_a_large_listing_that_does_not_match_its_id_restores_none_of_it(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large listing is read in pieces, never whole (``tree.iter_tree_blob``), so its content
    id is known only once it is all read: the first reading checks it, and none of its entries is
    planned from a listing stored under another's id (a machine that forged it)."""
    monkeypatch.setattr(tree, "STREAM_TREE", 0)
    monkeypatch.setattr(tree, "TREE_PIECE", 64)  # the listing in many pieces
    _outside, target, state = sandbox(tmp_path)
    crafter = Crafter(repo)
    listing = json.dumps({"nodes": [{"name": f"f{i:02}", "type": "file", "mode": 0o644} for i in range(30)]})
    forged = crafter.writer.save(TREE, listing.encode(), repo.crypter.content_id(b"another listing"))[0]
    snapshot_id = crafter.snapshot(
        [{"name": "d", "type": "dir", "mode": 0o755, "subtree": forged.hex()}, file("ok", b"ok\n")]
    )
    before = state()
    result = restore(repo, snapshot_id, target)
    assert state() == before and (target / "ok").read_bytes() == b"ok\n"
    assert os.listdir(target / "d") == []
    assert len(result.errors) == 1 and result.errors[0].startswith("/d: cannot read its listing ("), (
        result.errors
    )
    assert "does not match its id" in result.errors[0]
    repo.drop_tree_caches()
    with pytest.raises(IntegrityError, match="does not match its id"):
        repo.load_tree(forged)  # browsing it, read in pieces too


def test_listing_of_the_wrong_shape_is_an_error_of_its_folder(repo: Repository, tmp_path: Path) -> None:
    _outside, target, state = sandbox(tmp_path)
    snapshot_id = craft(
        repo, [folder("d", [{"name": "x", "type": 5, "user": ["root"]}]), file("ok", b"ok\n")]
    )
    before = state()
    result = restore(repo, snapshot_id, target)
    assert state() == before and (target / "ok").read_bytes() == b"ok\n"
    assert len(result.errors) == 1 and result.errors[0].startswith("/d: cannot read its listing")
