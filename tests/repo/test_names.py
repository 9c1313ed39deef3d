"""Any name a Linux file system allows backs up and restores byte-exactly, paths past PATH_MAX are
backed up, and an entry that cannot be read is reported by name, never dropped silently."""

from __future__ import annotations

import base64
import io
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudkeep.pathnames import display, path_fields, safe_text, to_bytes
from cloudkeep.repo import Repository, backup_files, cat_file, list_tree, resolve_path, restore
from cloudkeep.repo import archiver as archiver_module
from cloudkeep.repo.browse import lookup, walk
from cloudkeep.repo.tree import SYMLINK, Node, decode_tree, encode_tree

# Names as bytes: not UTF-8, control characters, shell-hostile, the longest a name can be.
ODD_NAMES = [
    b"\xff\xfe",
    b"caf\xe9",  # Latin-1 é
    b"caf\\xe9",  # its displayed form, literally: must stay a different file
    b"caf\xc3\xa9",  # valid UTF-8 é
    b"new\nline",
    b"back\\slash",
    b"-leading-dash",
    b" spaced ",
    b"\x01ctl\x7f",
    b"\xed\xa0\x80",  # a UTF-8-encoded surrogate: not valid UTF-8
    b"\xc0\xaf",  # an overlong "/"
    b"x" * 255,
    b"\xe9" * 255,
    b"mixed \xc3\xa9 \xe9\n\\-\xff",
]
ODD_DIR = b"dir-\xff\n"
LINK = b"link-\xfe"
LINK_TARGET = b"target-\xff/../caf\xe9"
XATTR = b"user.caf\xe9"


def make_odd_tree(root: Path) -> bytes:
    """Files under every odd name, at the top and inside a folder with an odd name; returns root."""
    top = os.fsencode(root)
    os.makedirs(os.path.join(top, ODD_DIR))
    for folder in (top, os.path.join(top, ODD_DIR)):
        for name in ODD_NAMES:
            with open(os.path.join(folder, name), "wb") as fh:
                fh.write(b"content of " + name)
    os.symlink(LINK_TARGET, os.path.join(top, LINK))
    os.setxattr(os.path.join(top, b"caf\xe9"), XATTR, b"\x00\xff value")
    return top


def snapshot_of(top: bytes) -> dict[bytes, tuple[object, ...]]:
    """Every entry below ``top`` by its relative bytes path: kind, content or target, xattrs."""
    found: dict[bytes, tuple[object, ...]] = {}
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, top)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir",)
            else:
                xattrs = {n: os.getxattr(path, n) for n in os.listxattr(path)}
                found[rel] = ("file", Path(os.fsdecode(path)).read_bytes(), xattrs)
    return found


def test_tree_blobs_keep_names_targets_and_xattr_names_exact() -> None:
    name, target, xattr = (os.fsdecode(b) for b in (b"\xff\xfe\n\\", LINK_TARGET, XATTR))
    node = Node(name=name, type=SYMLINK, target=target, xattrs={xattr: b"\x00\xff"})
    data = encode_tree([node])
    data.decode("ascii")  # lone surrogates are JSON escapes: the blob is plain text
    (back,) = decode_tree(data)
    assert back == node
    assert (os.fsencode(back.name), os.fsencode(back.target)) == (b"\xff\xfe\n\\", LINK_TARGET)
    assert list(map(os.fsencode, back.xattrs)) == [XATTR]


def test_displayed_names_are_text_and_exact_bytes_travel_beside_them() -> None:
    raw = "/srv/" + os.fsdecode(b"caf\xe9")
    assert display(raw) == "/srv/caf\\xe9"
    fields = path_fields(raw)
    assert base64.b64decode(fields["path_b64"]) == b"/srv/caf\xe9"
    assert path_fields("/srv/café") == {"path": "/srv/café"}  # valid UTF-8: unchanged, no extra field
    assert safe_text({"w": [raw], "n": 1}) == {"w": ["/srv/caf\\xe9"], "n": 1}
    assert to_bytes(os.fsdecode(b"\xed\xa0\x80")) == b"\xed\xa0\x80"


def test_odd_names_round_trip_with_the_file_cache_and_stay_cached(repo: Repository, tmp_path: Path) -> None:
    top = make_odd_tree(tmp_path / "src")
    before = snapshot_of(top)
    files = sum(1 for v in before.values() if v[0] == "file")
    assert files == 2 * len(ODD_NAMES)
    cache = tmp_path / "cache"

    first = backup_files(repo, [Path(os.fsdecode(top))], hostname="h", cache_dir=cache)
    assert first.stats["errors_total"] == 0 and first.stats["files"] == files
    restore(repo, first.id, tmp_path / "out")
    assert snapshot_of(os.fsencode(tmp_path / "out") + top) == before

    (db,) = (cache / repo.id).glob("files-*.sqlite")
    with sqlite3.connect(db) as conn:
        kinds = dict(conn.execute("SELECT typeof(path), count(*) FROM files GROUP BY 1").fetchall())
    # A folder under a UTF-8 path keeps its files in its own row (any name); the files of the
    # others get rows of their own, keyed by their exact bytes (UTF-8 paths would keep TEXT keys).
    in_odd_folders = sum(
        1 for rel in before if before[rel][0] == "file" and not _is_utf8(top + b"/" + os.path.dirname(rel))
    )
    assert in_odd_folders and kinds == {"blob": in_odd_folders}

    # Later backups find every odd name in the cache (by its row, or by its folder's unchanged
    # listing, which needs no rows): nothing is read again.
    base = os.fsdecode(top)
    for _ in range(2):
        second = backup_files(repo, [Path(base)], hostname="h", cache_dir=cache)
        assert second.stats["files_unchanged"] == files and second.stats["bytes_read"] == 0
        assert lookup(repo, second.id, base).subtree == lookup(repo, first.id, base).subtree
    restore(repo, second.id, tmp_path / "out2")
    assert snapshot_of(os.fsencode(tmp_path / "out2") + top) == before


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_browsing_shows_text_and_resolves_displayed_names(repo: Repository, tmp_path: Path) -> None:
    top = make_odd_tree(tmp_path / "src")
    snap = backup_files(repo, [Path(os.fsdecode(top))], hostname="h")
    base = os.fsdecode(top)
    entries = {e.path: e.to_json() for e in list_tree(repo, snap.id, base)}
    odd = entries[os.fsdecode(top + b"/" + ODD_DIR)]
    assert odd["path"] == f"{base}/dir-\\xff\n"
    assert base64.b64decode(odd["path_b64"]) == top + b"/" + ODD_DIR
    # A displayed path resolves to the exact one; the literal twin "caf\xe9" wins over its look-alike.
    assert resolve_path(repo, snap.id, f"{base}/dir-\\xff\n/\\xff\\xfe") == os.fsdecode(
        top + b"/" + ODD_DIR + b"/\xff\xfe"
    )
    assert resolve_path(repo, snap.id, f"{base}/caf\\xe9") == f"{base}/caf\\xe9"
    assert resolve_path(repo, snap.id, "/no/such") == "/no/such"


def make_deep_tree(root: Path, depth: int, long_names: bool = True) -> tuple[bytes, bytes]:
    """A chain of folders deeper than PATH_MAX (made through descriptors, as nothing else can) of
    long names or of short ones (many more levels); returns (the deep file's path, its content)."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    path = os.fsencode(root)
    try:
        for level in range(depth):
            name = b"d" * 200 + b"%02d" % level if long_names else b"abc"
            name += b"\xff" if level % 5 == 0 else b""
            os.mkdir(name, dir_fd=fd)
            deeper = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, path = deeper, path + b"/" + name
        content = b"deep content \xff" * 1000
        out = os.open(b"deep-\xe9.txt", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd)
        os.write(out, content)
        os.close(out)
        os.setxattr(f"/proc/self/fd/{fd}/" + os.fsdecode(b"deep-\xe9.txt"), "user.deep", b"kept")
        os.symlink(b"../\xfe", b"deep-link", dir_fd=fd)
    finally:
        os.close(fd)
    return path + b"/deep-\xe9.txt", content


def test_paths_longer_than_path_max_are_backed_up(repo: Repository, tmp_path: Path) -> None:
    deep_file, content = make_deep_tree(tmp_path / "src", depth=22)
    assert len(deep_file) > 4096
    cache = tmp_path / "cache"
    snap = backup_files(repo, [tmp_path / "src"], hostname="h", cache_dir=cache)
    assert snap.stats["errors_total"] == 0 and snap.stats["warnings"] == []
    nodes = dict(walk(repo, bytes.fromhex(snap.tree), "/"))
    node = nodes[os.fsdecode(deep_file)]
    assert node.size == len(content) and node.xattrs == {"user.deep": b"kept"}
    out = io.BytesIO()
    assert cat_file(repo, snap.id, os.fsdecode(deep_file), out) == len(content)
    assert out.getvalue() == content
    link = lookup(repo, snap.id, os.fsdecode(deep_file.rsplit(b"/", 1)[0] + b"/deep-link"))
    assert os.fsencode(link.target) == b"../\xfe"
    again = backup_files(repo, [tmp_path / "src"], hostname="h", cache_dir=cache)
    assert again.stats["files_unchanged"] == 1
    assert (
        lookup(repo, again.id, str(tmp_path / "src")).subtree
        == lookup(repo, snap.id, str(tmp_path / "src")).subtree
    )


def test_an_entry_that_cannot_be_read_is_named_as_an_error(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root reads everything, so entries vanish at the worst moments instead: one between the
    listing and its stat, one between its stat and its open (real file-system errors, injected timing)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep.txt").write_text("kept")
    gone_early, gone_late = os.fsdecode(b"gone-\xff.txt"), "gone-at-open.txt"
    for name in (gone_early, gone_late):
        (src / name).write_text("soon gone")
    real_stat, real_job = archiver_module._Archiver._stat_names, archiver_module._Archiver.file_job

    def stat_names(self, folder, base, names):  # type: ignore[no-untyped-def]
        if gone_early in names:  # listed, not yet stat'ed
            os.unlink(f"{base}/{gone_early}")
        return real_stat(self, folder, base, names)

    def file_job(self, files):  # type: ignore[no-untyped-def]
        for item in files:  # before its batch opens it
            if item.name == gone_late:
                os.unlink(item.path)
        return real_job(self, files)

    monkeypatch.setattr(archiver_module._Archiver, "_stat_names", stat_names)
    monkeypatch.setattr(archiver_module._Archiver, "file_job", file_job)
    snap = backup_files(repo, [src], hostname="h")
    errors = {e["path"]: e for e in snap.stats["errors"]}
    assert snap.stats["errors_total"] == 2 and set(errors) == {f"{src}/gone-\\xff.txt", f"{src}/{gone_late}"}
    assert (
        base64.b64decode(errors[f"{src}/gone-\\xff.txt"]["path_b64"]) == os.fsencode(src) + b"/gone-\xff.txt"
    )
    assert all("No such file" in e["error"] for e in errors.values())
    assert sorted(snap.stats["warnings"]) == sorted(f"{p}: {e['error']}" for p, e in errors.items())
    assert {e.path for e in list_tree(repo, snap.id, str(src))} == {f"{src}/keep.txt"}


@pytest.fixture
def deep_root(tmp_path: Path) -> Iterator[Path]:
    """Where a very deep tree is made, deleted afterwards without recursion (``shutil.rmtree``,
    which pytest's clean-up uses, recurses per level before Python 3.12)."""
    yield tmp_path / "src"
    stack, names = [os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)], [b"src"]
    stack.append(os.open(b"src", os.O_RDONLY | os.O_DIRECTORY, dir_fd=stack[0]))
    while len(stack) > 1:
        with os.scandir(stack[-1]) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        folder = next((name for name, is_dir in entries if is_dir), None)
        for name, is_dir in entries:
            if not is_dir:
                os.unlink(name, dir_fd=stack[-1])
        if folder is not None:
            stack.append(os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=stack[-1]))
            names.append(os.fsencode(folder))
        else:
            os.close(stack.pop())
            os.rmdir(names.pop(), dir_fd=stack[-1])
    os.close(stack[0])


def test_a_tree_deeper_than_the_recursion_limit_is_backed_up(
    repo: Repository, deep_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,500 levels of short names: the walk and the folders' completion must not recurse. The deep
    file's job is held until the walk is over, so its completion climbs every folder above it."""
    deep_file, content = make_deep_tree(deep_root, depth=1500, long_names=False)
    assert len(deep_file) > 4096
    walked = threading.Event()
    real_walk, real_job = archiver_module._Archiver.walk, archiver_module._Archiver.file_job

    def walk(self, top, path):  # type: ignore[no-untyped-def]
        real_walk(self, top, path)
        walked.set()

    def file_job(self, *args):  # type: ignore[no-untyped-def]
        assert walked.wait(timeout=30)
        return real_job(self, *args)

    monkeypatch.setattr(archiver_module._Archiver, "walk", walk)
    monkeypatch.setattr(archiver_module._Archiver, "file_job", file_job)
    snap = backup_files(repo, [deep_root], hostname="h")
    assert snap.stats["errors_total"] == 0 and snap.stats["dirs"] == 1 + 1500
    assert lookup(repo, snap.id, os.fsdecode(deep_file)).xattrs == {"user.deep": b"kept"}
    out = io.BytesIO()
    assert cat_file(repo, snap.id, os.fsdecode(deep_file), out) == len(content) and out.getvalue() == content
