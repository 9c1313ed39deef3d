"""Folders listed and stat'ed ahead of the walk by another process (repo/walkahead.py, repo/procwalk.py):
the restore point is the walk's own, whatever the process sends, late, early, or not at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cloudkeep.repo import Repository, archiver, backup_files, procwalk, walkahead
from cloudkeep.repo.walkahead import WalkAhead

DEADLINE_S = 30.0


def _tree(root: Path) -> Path:
    """Nested folders, one larger than a message holds (``RECORD_MOST`` is made 8 below: it comes
    in parts, and its subfolder's message between two of them), an
    excluded folder and excluded files, a symlink to a folder, an empty folder, names that are
    not UTF-8, a socket (never backed up)."""
    for a in range(3):
        for b in range(3):
            folder = root / f"d{a}" / f"e{b}"
            folder.mkdir(parents=True)
            for i in range(4):
                (folder / f"f{i}.txt").write_text(f"{a}{b}{i}\n" * (i + 1))
    big = root / "big"
    big.mkdir()
    for i in range(20):
        (big / f"m{i:02}").write_text(f"message {i}\n")
    (big / "sub").mkdir()
    (big / "sub" / "inner").write_text("below a large folder\n")
    (root / "skip-me").mkdir()
    (root / "skip-me" / "secret").write_text("excluded\n")
    (root / "d0" / "notes.tmp").write_text("excluded by its name\n")
    os.symlink("d1", root / "link-to-d1")
    (root / "empty").mkdir()
    odd = root / os.fsdecode(b"caf\xe9")
    odd.mkdir()
    (odd / os.fsdecode(b"\xff name")).write_text("not UTF-8\n")
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "d2" / "sock"))
    sock.close()
    return root


@pytest.fixture
def ahead(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The walk-ahead process from the first listing, small messages; what it served, and every
    instance (to check each process ended)."""
    monkeypatch.setattr(archiver, "AHEAD_FROM", 0)
    monkeypatch.setattr(procwalk, "RECORD_MOST", 8)  # sent to the process
    seen: dict[str, Any] = {"served": 0, "instances": [], "rests": []}
    real_init, real_listing = WalkAhead.__init__, WalkAhead.listing
    real_rest = archiver._Archiver._listed_here

    def listed_here(self: archiver._Archiver, folder: Any, base: str, last: str | None) -> Any:
        seen["rests"].append((base, last))
        return real_rest(self, folder, base, last)

    monkeypatch.setattr(archiver._Archiver, "_listed_here", listed_here)

    def init(self: WalkAhead, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        seen["instances"].append(self)
        seen["proc"] = self.proc
        if self.proc is not None:  # deterministic: all it sends is there (in use, nothing waits for it)
            self.proc.wait(DEADLINE_S)

    def listing(self: WalkAhead, base: str, fd: int, *args: Any, **kwargs: Any) -> Any:
        got = real_listing(self, base, fd, *args, **kwargs)
        seen["served"] += got is not None
        return got

    monkeypatch.setattr(WalkAhead, "__init__", init)
    monkeypatch.setattr(WalkAhead, "listing", listing)
    return seen


def _backup(repo: Repository, src: Path, *, processes: bool = True, **kwargs: Any) -> Any:
    excludes = ["skip-me", "*.tmp"]
    return backup_files(repo, [src], hostname="h", excludes=excludes, processes=processes, **kwargs)


def test_listings_from_the_process_give_the_walks_own_trees(
    repo: Repository, tmp_path: Path, ahead: dict[str, Any]
) -> None:
    src = _tree(tmp_path / "src")
    by_walk = _backup(repo, src, processes=False)  # no worker processes: no walk-ahead either
    assert not ahead["instances"]
    listed_ahead = _backup(repo, src)
    assert ahead["served"] == 16  # every folder but the top one (listed before it started)
    assert listed_ahead.tree == by_walk.tree
    assert listed_ahead.stats["files"] == by_walk.stats["files"] == 3 * 3 * 4 + 21 + 1
    assert all(w.proc is None for w in ahead["instances"])  # closed
    assert ahead["proc"].returncode is not None  # and reaped


def test_include_masks_apply_to_listings_from_the_process(
    repo: Repository, tmp_path: Path, ahead: dict[str, Any]
) -> None:
    src = _tree(tmp_path / "src")
    by_walk = _backup(repo, src, processes=False, includes=["/**/e1/*"])
    listed_ahead = _backup(repo, src, includes=["/**/e1/*"])
    assert ahead["served"] and listed_ahead.tree == by_walk.tree
    assert listed_ahead.stats["files"] == 3 * 4


def test_a_machine_mounted_under_a_host_folder_is_listed_ahead_with_its_own_paths(
    repo: Repository, tmp_path: Path, ahead: dict[str, Any]
) -> None:
    """``root=``: the process walks the sources below the host folder, and masks name the
    machine's paths (``/srv/**/skip-me`` is not a host path)."""
    machine = tmp_path / "machine"
    _tree(machine / "srv" / "app")
    (machine / "etc").mkdir()
    (machine / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    kwargs: dict[str, Any] = {"hostname": "h", "root": machine, "excludes": ["/srv/**/skip-me"]}
    by_walk = backup_files(repo, ["/srv", "/etc"], processes=False, **kwargs)
    listed_ahead = backup_files(repo, ["/srv", "/etc"], processes=True, **kwargs)
    assert ahead["served"] >= 15 and listed_ahead.tree == by_walk.tree
    assert listed_ahead.paths == ["/etc", "/srv"]


def test_a_process_that_dies_or_never_starts_leaves_the_walk_to_list(
    repo: Repository, tmp_path: Path, ahead: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _tree(tmp_path / "src")
    by_walk = _backup(repo, src, processes=False)
    real_init = WalkAhead.__init__

    def killed(self: WalkAhead, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        assert self.proc is not None
        self.proc.kill()  # before it sent anything, or while it walks

    monkeypatch.setattr(WalkAhead, "__init__", killed)
    assert _backup(repo, src).tree == by_walk.tree

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(walkahead, "spawn", refused)
    snap = _backup(repo, src)
    assert snap.tree == by_walk.tree and snap.stats["errors_total"] == 0


def _unused(last: str | None) -> list[Any]:
    raise AssertionError(f"the rest of a folder listed here (after {last!r})")


def _drained(walk: WalkAhead) -> None:
    """Wait (with a deadline) until the process has sent everything and ended."""
    assert walk.proc is not None
    walk.proc.wait(DEADLINE_S)


def test_a_folder_swapped_after_the_process_listed_it_is_listed_by_the_walk(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "a" / "inner").mkdir(parents=True)
    (root / "a" / "inner" / "old").write_text("listed by the process\n")
    walk = WalkAhead([str(root)], "", [])
    try:
        _drained(walk)
        os.rename(root / "a" / "inner", root / "a" / "moved")
        (root / "a" / "inner").mkdir()  # another folder (inode) under the same name
        (root / "a" / "inner" / "new").write_text("there now\n")
        for path in (root, root / "a"):
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                assert walk.listing(str(path), fd, _unused) is not None
            finally:
                os.close(fd)
        fd = os.open(root / "a" / "inner", os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert walk.listing(str(root / "a" / "inner"), fd, _unused) is None  # not the folder it listed
        finally:
            os.close(fd)
    finally:
        walk.close()


def test_the_process_sends_in_the_walks_order_and_skips_excluded_folders(tmp_path: Path) -> None:
    """Messages for folders the walk passed are dropped; one ahead is kept for its folder."""
    root = tmp_path / "src"
    for name in ("a", "a-b", "a/b", "a/b/c", "skip", "skip/deep", "z"):
        (root / name).mkdir(parents=True)
    (root / "a" / "b" / "c" / "file").write_text("x\n")
    sent = WalkAhead([str(root)], "", ["/**/skip"])
    try:
        paths = []
        while (message := sent.channel.recv())[0] == "folder":
            paths.append(message[1][len(str(root)) :])
        assert message == ("end",)
        assert paths == ["", "/a", "/a/b", "/a/b/c", "/a-b", "/z"]  # depth first by name, no skip/
    finally:
        sent.close()
    walk = WalkAhead([str(root)], "", ["/**/skip"])
    try:
        _drained(walk)
        fd = os.open(root / "a" / "b" / "c", os.O_RDONLY | os.O_DIRECTORY)
        try:  # the walk starts here: the process's first three messages are behind it
            entries = walk.listing(str(root / "a" / "b" / "c"), fd, _unused)
        finally:
            os.close(fd)
        assert entries is not None and [(name, kind) for name, kind, _ in entries] == [("file", "file")]
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:  # behind what the process sent next (a-b): listed by the walk
            assert walk.listing(str(root), fd, _unused) is None
        finally:
            os.close(fd)
        fd = os.open(root / "z", os.O_RDONLY | os.O_DIRECTORY)
        try:  # the next message after a-b is z: skip/ and skip/deep were never listed
            assert walk.listing(str(root / "z"), fd, _unused) == []
        finally:
            os.close(fd)
        assert walk.listing(str(root / "zz"), fd, _unused) is None and walk.proc is None  # "end": closed
    finally:
        walk.close()


def _large(root: Path) -> Path:
    """Large folders (``RECORD_MOST`` is 8) in each other, with subfolders among their files, a
    large maildir-like folder (files only), an excluded file among a large folder's."""
    top = root / "top"
    for i in range(11):
        (top / f"f{i:02}").parent.mkdir(parents=True, exist_ok=True)
        (top / f"f{i:02}").write_text(f"top {i}\n")
    for name in ("a-sub", "f05-sub", "zz-sub"):  # first, among the files, last
        (top / name).mkdir()
        (top / name / "inner").write_text(f"in {name}\n")
    nested = top / "f05-sub" / "large"
    nested.mkdir()
    for i in range(9):
        (nested / f"n{i}").write_text(f"nested {i}\n")
    (nested / "deep").mkdir()
    (nested / "deep" / "leaf").write_text("leaf\n")
    (nested / "n4.tmp").write_text("excluded\n")
    maildir = root / "cur"
    maildir.mkdir()
    for i in range(30):
        (maildir / f"{1000 + i}.host:2,S").write_text(f"message {i}\n" * (i + 1))
    return root


def test_large_folders_come_in_parts_as_the_walk_takes_them(
    repo: Repository, tmp_path: Path, ahead: dict[str, Any]
) -> None:
    src = _large(tmp_path / "src")
    by_walk = _backup(repo, src, processes=False)
    listed_ahead = _backup(repo, src)
    assert listed_ahead.tree == by_walk.tree
    assert listed_ahead.stats["files"] == by_walk.stats["files"] == 11 + 3 + 9 + 1 + 30
    # every folder but the top one, each large one served from its first part on, to its last
    assert ahead["served"] == 7 and listed_ahead.stats["errors_total"] == 0
    assert ahead["rests"] == []


def test_a_large_folder_whose_parts_stop_coming_is_listed_on_here(
    repo: Repository, tmp_path: Path, ahead: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process gone after a large folder's first part: the walk lists the names after the
    last one it took, each once (the process is ended, the rest listed here)."""
    src = _large(tmp_path / "src")
    by_walk = _backup(repo, src, processes=False)
    real_recv = WalkAhead._recv

    def recv(self: WalkAhead) -> Any:
        message = real_recv(self)
        if self.inside:  # asked for the next part of a large folder: as if the process died
            return None
        return message

    monkeypatch.setattr(WalkAhead, "_recv", recv)
    snap = _backup(repo, src)
    assert snap.tree == by_walk.tree and snap.stats["errors_total"] == 0
    assert ahead["rests"] == [(str(src / "cur"), "1007.host:2,S")]  # after cur's first part (8 names)
    assert ahead["instances"][0].proc is None


def test_a_large_folder_compared_with_the_last_backup_is_taken_whole_unless_nested(
    repo: Repository, tmp_path: Path, ahead: dict[str, Any]
) -> None:
    """With a tree cache the walk takes a folder's every entry before any subfolder: a large
    folder with subfolders is listed here (its parts would pass over their messages), one of
    files only (a maildir) is still served, part after part."""
    src = _large(tmp_path / "src")
    cache = {"cache_dir": tmp_path / "cache"}
    _backup(repo, src, **cache)
    (src / "cur" / "1999.host:2,S").write_text("new mail\n")
    (src / "top" / "f99").write_text("new file\n")
    served_before = ahead["served"]
    again = _backup(repo, src, **cache)
    by_walk = _backup(repo, src, processes=False)
    assert again.tree == by_walk.tree and again.stats["errors_total"] == 0
    assert ahead["served"] - served_before == 7 - 2  # neither large folder with subfolders


def test_a_subfolder_the_process_did_not_send_keeps_its_large_folders_next_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk asks for a folder below a large one that the process sent nothing for (it could
    not open it): the large folder's next part is still to come, not passed. And it does not
    enter a subfolder the process sent (it could not open it): that message is passed over for
    the next part. Every entry of the large folder is taken once, none listed here."""
    monkeypatch.setattr(procwalk, "RECORD_MOST", 4)
    large = tmp_path / "src" / "large"
    names = [f"f{i}" for i in range(7)]
    for name in names:
        large.mkdir(parents=True, exist_ok=True)
        (large / name).write_text(name)
    (large / "f3x").mkdir()
    (large / "f5x").mkdir()  # never entered below
    walk = WalkAhead([str(large)], "", [])
    try:
        _drained(walk)
        fd = os.open(large, os.O_RDONLY | os.O_DIRECTORY)
        try:
            entries = walk.listing(str(large), fd, _unused)
            assert entries is not None and not isinstance(entries, list)  # in parts
            taken = []
            for name, _, _ in entries:
                taken.append(name)
                if name == "f3x":  # the walk enters it, and below it a folder the process did not send
                    assert walk.listing(str(large / "f3x" / "ghost"), fd, _unused) is None
        finally:
            os.close(fd)
        assert taken == sorted([*names, "f3x", "f5x"]) and walk.proc is not None
    finally:
        walk.close()


def test_a_process_started_mid_walk_sends_only_what_comes_after_the_walks_folder(tmp_path: Path) -> None:
    """Started while the walk lists a folder itself, the process neither sends nor stats that
    folder or any before it: it goes down to it and sends its subfolders and what follows."""
    root = tmp_path / "src"
    for name in ("a", "a-b", "a/b", "a/b/c", "a/b/d", "a/a", "a/c", "z", "z/q"):
        (root / name).mkdir(parents=True)

    def sent(bases: list[Path], after: Path) -> list[str]:
        walk = WalkAhead([str(b) for b in bases], "", [], str(after))
        try:
            paths = []
            while (message := walk.channel.recv())[0] == "folder":
                paths.append(message[1][len(str(root)) :])
            assert message == ("end",)
            return paths
        finally:
            walk.close()

    assert sent([root], root / "a" / "b") == ["/a/b/c", "/a/b/d", "/a/c", "/a-b", "/z", "/z/q"]
    assert sent([root / "a", root / "z"], root / "z") == ["/z/q"]  # the source before it: passed


def test_sources_are_walked_in_the_walks_order_none_below_another() -> None:
    assert archiver._walk_order("", ["/a/b", "/a-b", "/a", "/c"]) == ["/a", "/a-b", "/c"]
    assert archiver._walk_order("/mnt/snap", ["/", "/etc"]) == ["/mnt/snap"]


def test_a_small_backup_starts_no_process(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[object] = []
    monkeypatch.setattr(archiver, "start_walk_ahead", lambda *a: started.append(a))
    src = _tree(tmp_path / "src")
    _backup(repo, src)
    assert not started
    monkeypatch.setattr(archiver, "AHEAD_FROM", 10)
    _backup(repo, src)
    assert len(started) == 1


def test_killing_the_backup_ends_the_process(tmp_path: Path) -> None:
    """The process writes to a parent that is gone: it ends (it never outlives the backup)."""
    (tmp_path / "src" / "a").mkdir(parents=True)
    proc, channel = walkahead.spawn("procwalk")
    try:
        os.close(channel.read_fd)  # what the parent's death does to the pipe, before it walks
        init = {"bases": [str(tmp_path / "src")], "prefix": "", "excludes": [], "most": 8}
        channel.send(("walk", init))
        assert proc.wait(DEADLINE_S) == 0  # its first message found no reader: it ended
    finally:
        walkahead.end(proc)
