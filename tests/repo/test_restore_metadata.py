"""Owners and modes after restore, whatever creating a file gives (``targetfs.Defaults``); the
paused collector.

One-chunk files are created with their final mode when creating already gives their owner and
mode, and then get no chown/chmod: these tests pin that the result is the same as with them.
"""

from __future__ import annotations

import errno
import gc
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudkeep.repo import Repository, backup_files, restore, restorer
from cloudkeep.repo.memory import collector_paused
from cloudkeep.repo.restorefiles import RestoredFile
from cloudkeep.repo.targetfs import PRIVATE, Defaults
from cloudkeep.repo.tree import Node
from tests.repo.conftest import restored

# Every test twice: on threads alone, and with the worker process writing too (conftest).
pytestmark = pytest.mark.usefixtures("restore_worker")

ROOT = os.geteuid() == 0
OTHER = 4321  # an id no account of the test machine needs to have
# (name, mode, uid, gid): uid/gid None: the test's own
ENTRIES = [
    ("plain", 0o644, None, None),
    ("program", 0o755, None, None),
    ("private", 0o600, None, None),
    ("setuid", 0o4755, None, None),
    ("others", 0o640, OTHER, OTHER),
    ("group", 0o664, None, OTHER),
]


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name, mode, uid, gid in ENTRIES:
        path = src / name
        path.write_bytes(name.encode())
        if ROOT:
            os.chown(path, os.geteuid() if uid is None else uid, os.getegid() if gid is None else gid)
        os.chmod(path, mode)
    return src


def _owners_and_modes(folder: Path) -> dict[str, tuple[int, int, int]]:
    found = {}
    for name, *_ in ENTRIES:
        st = (folder / name).lstat()
        found[name] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return found


def _default_acl() -> bytes:
    """A POSIX default ACL as the kernel stores it: user::rwx, group::---, other::---."""
    entries = [(0x01, 7), (0x04, 0), (0x20, 0)]  # (tag, permissions); ids unused for these tags
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 2**32 - 1) for tag, perm in entries)


@pytest.mark.skipif(not ROOT, reason="owners are restored by root only")
@pytest.mark.parametrize("target_kind", ["plain", "setgid", "reused-setgid", "umask-077", "default-acl"])
def test_owner_and_mode_are_the_source_s_whatever_creating_gives(
    repo: Repository, tmp_path: Path, umask: None, target_kind: str
) -> None:
    src = _source(tmp_path)
    snap = backup_files(repo, [src], hostname="h")
    target = tmp_path / "out"
    target.mkdir()
    if target_kind == "setgid":  # new entries take the folder's group, not the restorer's
        os.chown(target, 0, OTHER + 1)
        os.chmod(target, 0o2755)
    elif target_kind == "reused-setgid":  # a folder on the way already there, with its own group
        inner = restored(target, src)
        inner.mkdir(parents=True)
        os.chown(inner, 0, OTHER + 1)
        os.chmod(inner, 0o2755)
    elif target_kind == "umask-077":
        os.umask(0o077)
    elif target_kind == "default-acl":  # the ACL, not the umask, gives new entries their mode
        try:
            os.setxattr(target, "system.posix_acl_default", _default_acl())
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                pytest.skip("no POSIX ACLs on this file system")
            raise
    result = restore(repo, snap.id, target)
    assert result.ok, result.errors
    assert _owners_and_modes(restored(target, src)) == _owners_and_modes(src)


def test_files_created_with_their_mode_get_no_chmod(
    repo: Repository, tmp_path: Path, umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calls saved: only folders (metadata at the end) are chmod-ed, not one-chunk files."""
    src = tmp_path / "src"
    src.mkdir()
    for n in range(20):
        (src / f"f{n}").write_bytes(b"x" * (n + 1))  # an empty file has no chunk
        os.chmod(src / f"f{n}", 0o644 if n % 2 else 0o755)
    snap = backup_files(repo, [src], hostname="h")
    calls: list[object] = []
    chmod = os.chmod

    def counting(path: object, mode: int, **kwargs: object) -> None:
        calls.append(path)
        chmod(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "chmod", counting)
    result = restore(repo, snap.id, tmp_path / "out")
    assert result.ok and result.files == 20
    assert len(calls) == result.dirs  # was files + folders
    out = restored(tmp_path / "out", src)
    assert {stat.S_IMODE((out / f"f{n}").stat().st_mode) for n in range(20)} == {0o644, 0o755}


def test_defaults_create_a_file_with_its_mode_only_when_nothing_differs() -> None:
    d = Defaults(uid=0, gid=0, umask=0o022)
    assert d.create_mode(0o644, 0, 0) == 0o644
    assert d.create_mode(0o755, 0, 0) == 0o755
    assert d.create_mode(0o664, 0, 0) is None  # the umask would take the group's write bit
    assert d.create_mode(0o4755, 0, 0) is None  # set-id bits are never given by creating
    assert d.create_mode(0o644, 1000, 0) is None  # another owner: chown, and chmod after it
    assert d.create_mode(0o644, 0, 1000) is None
    assert Defaults(uid=0, gid=None, umask=0o022).create_mode(0o644, 0, 0) is None  # set-gid target
    assert Defaults(uid=0, gid=0, umask=None).create_mode(0o644, 0, 0) is None  # default ACL
    assert PRIVATE == 0o600


def test_defaults_read_the_target_and_the_umask(tmp_path: Path, umask: None) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert Defaults.of(fd) == Defaults(os.geteuid(), os.getegid(), 0o022)
        os.chmod(tmp_path, 0o2755)
        assert Defaults.of(fd).gid is None
    finally:
        os.close(fd)


def test_the_collector_is_paused_during_a_restore_and_back_after(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a" * 1000)
    snap = backup_files(repo, [src], hostname="h")
    seen: list[bool] = []
    assert gc.isenabled()
    real_apply = restorer._Restorer.apply

    def apply(self: restorer._Restorer, item: tuple[int, str, Node, RestoredFile | None]) -> None:
        seen.append(gc.isenabled())  # metadata at the end: the plan is still alive then
        real_apply(self, item)

    monkeypatch.setattr(restorer._Restorer, "apply", apply)
    restore(repo, snap.id, tmp_path / "out", progress=lambda _: seen.append(gc.isenabled()))
    assert len(seen) >= 2 and not any(seen)
    assert gc.isenabled()


def test_overlapping_pauses_enable_the_collector_when_the_last_leaves() -> None:
    assert gc.isenabled()
    first, second = collector_paused(), collector_paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # not nested: the first leaves while the second is inside
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # was off before: stays off
    finally:
        gc.enable()
