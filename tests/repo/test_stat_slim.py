"""The slim ``Stat`` the walk keeps per entry must describe an entry exactly as ``os.stat_result``
does: the file cache's keys and the tree's nodes made from it must not change (a different key
would re-read every file once after an upgrade; a different node would change the tree)."""

from __future__ import annotations

import os
from pathlib import Path

from cloudkeep.repo.folders import stat_key
from cloudkeep.repo.fsmeta import Stat, node_from_stat, node_type


def test_stat_gives_the_same_key_and_node_as_os_stat(tmp_path: Path) -> None:
    (tmp_path / "data").write_bytes(b"x" * 5000)
    os.link(tmp_path / "data", tmp_path / "link")  # nlink 2: inode identity goes into the node
    os.symlink("data", tmp_path / "sym")
    for name in ("data", "sym"):
        full = os.lstat(tmp_path / name)
        slim = Stat(full)
        assert stat_key(name, slim) == stat_key(name, full)
        kind = node_type(full)
        assert kind is not None and node_type(slim) == kind
        path = str(tmp_path / name)
        assert node_from_stat(name, path, slim, kind) == node_from_stat(name, path, full, kind)


def test_stat_holds_no_per_instance_dict() -> None:
    slim = Stat(os.lstat("."))
    assert not hasattr(slim, "__dict__")
    assert slim.st_ino == os.lstat(".").st_ino
