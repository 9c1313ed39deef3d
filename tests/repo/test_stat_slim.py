"""The ``Stat`` the walk reads an entry's fields from is a view over its stat key: it must describe
an entry exactly as ``os.stat_result`` does, so the file cache's keys and the tree's nodes made
from it do not change (a different key would re-read every file once after an upgrade; a
different node would change the tree)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudkeep.repo import fsmeta
from cloudkeep.repo.fsmeta import Stat, node_from_stat, node_type, stat_key

FIELDS = (
    "st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks", "st_mtime_ns",
    "st_ctime_ns", "st_rdev",
)  # fmt: skip


@pytest.mark.parametrize("name", ["data", "link", "sym", "folder", "/dev/null"])
def test_stat_gives_the_same_fields_key_and_node_as_os_stat(tmp_path: Path, name: str) -> None:
    (tmp_path / "data").write_bytes(b"x" * 5000)
    os.link(tmp_path / "data", tmp_path / "link")  # nlink 2: inode identity goes into the node
    os.symlink("data", tmp_path / "sym")
    (tmp_path / "folder").mkdir()
    path = str(tmp_path / name) if not name.startswith("/") else name  # /dev/null: a device's rdev
    full = os.lstat(path)
    slim = Stat(stat_key(os.path.basename(path), full))
    assert {f: getattr(slim, f) for f in FIELDS} == {f: getattr(full, f) for f in FIELDS}
    assert stat_key(name, slim) == stat_key(name, full)
    kind = node_type(full)
    assert kind is not None and node_type(slim) == kind
    base = os.path.basename(path)
    assert node_from_stat(base, path, slim, kind) == node_from_stat(base, path, full, kind)


def test_stat_holds_nothing_but_the_key() -> None:
    key = stat_key(".", os.lstat("."))
    slim = Stat(key)
    assert not hasattr(slim, "__dict__")
    assert Stat.__slots__ == ("key",) and slim.key is key
    assert slim.st_ino == os.lstat(".").st_ino


def test_stat_keys_share_one_object_per_mode_device_and_owner(tmp_path: Path) -> None:
    """The walk keeps a key per listed entry: the values most entries repeat are one object each."""
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(b"x")
    os.chmod(tmp_path / "a", 0o100640)
    os.chmod(tmp_path / "b", 0o100640)
    a, b = (stat_key(name, os.lstat(tmp_path / name)) for name in ("a", "b"))
    assert a[1] == b[1] == 0o100640 and all(a[i] is b[i] for i in (1, 3, 5, 6))  # mode, device, uid, gid
    assert a[1:] != b[1:]  # (their inodes differ: only the shared fields are one object)


def test_the_shared_values_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent runs for months over mounts that come and go: the shared values do not grow forever."""
    monkeypatch.setattr(fsmeta, "_SHARED_MOST", 8)
    st = os.lstat(".")
    for dev in range(100):
        stat_key("x", os.stat_result((st.st_mode, st.st_ino, 10_000 + dev, *st[3:10])))
    assert len(fsmeta._shared) <= 8 + 4
