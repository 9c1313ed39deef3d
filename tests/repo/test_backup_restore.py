"""File backup and restore round trips on the in-memory backend."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from cloudkeep.errors import NotFoundError
from cloudkeep.repo import (
    BackupProgress,
    Repository,
    backup_files,
    cat_file,
    find,
    list_snapshots,
    list_tree,
    restore,
)
from tests.repo.conftest import ancestor_trees, blob_ids, restored, subtree_of


def same_tree(a: Path, b: Path) -> bool:
    return (
        subprocess.run(["diff", "-r", "--no-dereference", str(a), str(b)], capture_output=True).returncode
        == 0
    )


def test_roundtrip_content_and_metadata(repo: Repository, source: Path, tmp_path: Path) -> None:
    os.utime(source / "docs" / "readme.txt", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    snap = backup_files(repo, [source], hostname="web1", tags=["daily"])
    assert snap.kind == "files" and snap.hostname == "web1" and snap.tags == ["daily"]
    assert snap.paths == [str(source)]
    assert snap.stats["files"] == 6 and snap.stats["bytes_new"] > 0

    result = restore(repo, snap.id, tmp_path / "out")
    out = restored(tmp_path / "out", source)
    assert same_tree(source, out)
    assert result.verified == result.files > 0
    assert os.stat(out / "docs" / "readme.txt").st_mtime_ns == 1_600_000_000_123_456_789
    assert os.stat(out / "script.sh").st_mode & 0o777 == 0o750
    assert os.readlink(out / "link-to-readme") == "docs/readme.txt"
    assert os.stat(out / "blob.bin").st_ino == os.stat(out / "blob-hardlink.bin").st_ino
    assert (out / "empty-dir").is_dir() and (out / "empty.txt").stat().st_size == 0


def test_xattrs_and_fifo(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "tagged").write_text("x")
    try:
        os.setxattr(src / "tagged", "user.cloudkeep", b"value")
    except OSError:
        pytest.fail("the test file system must support user xattrs")
    os.mkfifo(src / "pipe")
    snap = backup_files(repo, [src], hostname="h")
    restore(repo, snap.id, tmp_path / "out")
    out = restored(tmp_path / "out", src)
    assert os.getxattr(out / "tagged", "user.cloudkeep") == b"value"
    assert os.path.exists(out / "pipe") and not os.path.isfile(out / "pipe")


def test_sparse_file_restored_sparse(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse.img", "wb") as fh:
        fh.truncate(64 * 2**20)
        fh.seek(10 * 2**20)
        fh.write(b"data in the middle")
    snap = backup_files(repo, [src], hostname="h")
    assert snap.stats["bytes_stored"] < 2**20  # zeros dedup and compress to almost nothing
    restore(repo, snap.id, tmp_path / "out")
    out = restored(tmp_path / "out", src) / "sparse.img"
    assert out.read_bytes() == (src / "sparse.img").read_bytes()
    assert out.stat().st_blocks * 512 < 4 * 2**20


def test_excludes_and_includes(repo: Repository, source: Path, tmp_path: Path) -> None:
    snap = backup_files(repo, [source], hostname="h", excludes=["*.bin", f"{source}/docs/deep"])
    names = {e.path.removeprefix(str(source)) for e in list_tree(repo, snap.id, str(source), recursive=True)}
    assert "/blob.bin" not in names and "/docs/deep" not in names and "/docs/readme.txt" in names
    snap = backup_files(repo, [source], hostname="h", includes=["*.md"])
    files = {e.path for e in list_tree(repo, snap.id, str(source), recursive=True) if e.type == "file"}
    assert files == {f"{source}/docs/deep/er/notes.md"}


def test_unchanged_files_not_reread(repo: Repository, source: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = backup_files(repo, [source], hostname="h", cache_dir=cache)
    before = blob_ids(repo)
    second = backup_files(repo, [source], hostname="h", cache_dir=cache)
    assert second.stats["bytes_read"] == 0 and second.stats["files_unchanged"] == 6
    # Unchanged trees dedup completely; only the folders above the source (/tmp and its children,
    # which other processes change at any moment) may be stored anew.
    assert subtree_of(repo, second.tree, source) == subtree_of(repo, first.tree, source)
    assert blob_ids(repo) - before <= ancestor_trees(repo, second.tree, source)
    with open(source / "docs" / "readme.txt", "a") as fh:
        fh.write("appended\n")
    third = backup_files(repo, [source], hostname="h", cache_dir=cache)
    assert third.stats["files_unchanged"] == 5
    assert 0 < third.stats["bytes_read"] < 20_000
    out = tmp_path / "out"
    restore(repo, third.id, out, paths=[f"{source}/docs/readme.txt"])
    assert restored(out, source / "docs" / "readme.txt").read_text().endswith("appended\n")


def test_incremental_dedups_changed_large_file(repo: Repository, source: Path) -> None:
    backup_files(repo, [source], hostname="h")
    data = bytearray((source / "blob.bin").read_bytes())
    data[2**20 : 2**20 + 100] = b"X" * 100  # in-place rewrite of 100 bytes in a 3 MiB file
    (source / "blob.bin").write_bytes(bytes(data))
    snap = backup_files(repo, [source], hostname="h")
    assert snap.stats["bytes_new"] < 600_000  # only the chunks around the edit (+ trees)


def test_restore_subtree_and_single_file(repo: Repository, source: Path, tmp_path: Path) -> None:
    snap = backup_files(repo, [source], hostname="h")
    out = tmp_path / "out"
    result = restore(repo, snap.id, out, paths=[f"{source}/docs"])
    assert same_tree(source / "docs", restored(out, source / "docs"))
    assert not restored(out, source / "blob.bin").exists()
    assert result.files == 2
    with pytest.raises(NotFoundError):
        restore(repo, snap.id, out, paths=[f"{source}/nope"])


def test_cat_file_streams_content(repo: Repository, source: Path) -> None:
    snap = backup_files(repo, [source], hostname="h")
    buf = io.BytesIO()
    assert cat_file(repo, snap.id[:8], f"{source}/blob.bin", buf) == 3 * 2**20
    assert buf.getvalue() == (source / "blob.bin").read_bytes()
    with pytest.raises(NotFoundError, match="not a file"):
        cat_file(repo, snap.id, f"{source}/docs", io.BytesIO())


def test_browse_and_find(repo: Repository, source: Path) -> None:
    first = backup_files(repo, [source], hostname="h")
    (source / "new.md").write_text("x")
    second = backup_files(repo, [source], hostname="h")
    top = {e.path: e for e in list_tree(repo, second.id, str(source))}
    assert top[f"{source}/docs"].type == "dir" and top[f"{source}/blob.bin"].size == 3 * 2**20
    hits = list(find(repo, "*.md"))
    assert {(sid, e.path) for sid, e in hits} == {
        (first.id, f"{source}/docs/deep/er/notes.md"),
        (second.id, f"{source}/docs/deep/er/notes.md"),
        (second.id, f"{source}/new.md"),
    }
    assert [s.id for s in list_snapshots(repo)] == [first.id, second.id]


def test_multiple_sources_and_progress(repo: Repository, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b" / "inner"
    a.mkdir()
    b.mkdir(parents=True)
    (a / "1").write_bytes(os.urandom(5 * 2**20))
    (b / "2").write_text("two")
    seen: list[BackupProgress] = []
    snap = backup_files(repo, [a, b], hostname="h", progress=seen.append)
    assert snap.paths == sorted([str(a), str(b)])
    assert seen and seen[-1].files_done == 2 and seen[-1].bytes_read == 5 * 2**20 + 3
    restore(repo, snap.id, tmp_path / "out")
    assert restored(tmp_path / "out", b / "2").read_text() == "two"


def test_missing_source_is_a_clear_error(repo: Repository, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        backup_files(repo, [tmp_path / "nope"], hostname="h")
    assert list_snapshots(repo) == []


def test_one_missing_source_is_skipped_and_named(repo: Repository, tmp_path: Path) -> None:
    """issue 16: one missing path must not fail the whole backup; the rest is backed up."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    missing = tmp_path / "srv"
    snap = backup_files(repo, [tmp_path / "etc", missing], hostname="h")
    assert snap.paths == [str(tmp_path / "etc")]
    assert snap.stats["errors_total"] == 1 and snap.stats["errors"][0]["path"] == str(missing)
    assert any(str(missing) in w and "does not exist" in w for w in snap.stats["warnings"])
    restore(repo, snap.id, tmp_path / "out")
    assert restored(tmp_path / "out", tmp_path / "etc" / "hosts").read_text() == "127.0.0.1 localhost\n"


def test_unreadable_file_is_skipped_with_warning(
    repo: Repository, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root can read anything, so a read failure is injected (in-process: no peer can produce it)."""
    from cloudkeep.repo import archiver

    for method in ("chunk_file", "small_file"):  # files below the minimum chunk take the second

        def failing(self, fh, path, size, real=getattr(archiver._Archiver, method)):  # type: ignore[no-untyped-def]
            if path.endswith("script.sh"):
                raise PermissionError(13, "Permission denied")
            return real(self, fh, path, size)

        monkeypatch.setattr(archiver._Archiver, method, failing)
    snap = backup_files(repo, [source], hostname="h")
    assert any("script.sh" in w for w in snap.stats["warnings"])
    names = {e.path for e in list_tree(repo, snap.id, str(source))}
    assert f"{source}/script.sh" not in names and f"{source}/blob.bin" in names


def test_entire_machine_source(repo: Repository, tmp_path: Path) -> None:
    """Source "/" (entire machine): the root is walked directly; /etc stands in for a whole machine."""
    excludes = [f"/{name}" for name in os.listdir("/") if name != "etc"]
    snap = backup_files(repo, [Path("/")], hostname="h", excludes=excludes)
    assert snap.paths == ["/"]
    top = {e.path for e in list_tree(repo, snap.id, "/")}
    assert top == {"/etc"}
    restore(repo, snap.id, tmp_path / "out", paths=["/etc/hostname"])
    assert (tmp_path / "out" / "etc" / "hostname").read_bytes() == Path("/etc/hostname").read_bytes()
    result = restore(repo, snap.id, tmp_path / "all")
    assert (tmp_path / "all" / "etc" / "hostname").exists() and result.files > 0
    assert os.stat(tmp_path / "all").st_mtime > 1e9  # the synthetic root (mtime 0) left the target alone


def test_machine_root_maps_paths(repo: Repository, tmp_path: Path) -> None:
    """``root=``: a machine's "/" mounted under a host folder is recorded with the machine's paths."""
    machine = tmp_path / "machine"
    (machine / "data").mkdir(parents=True)
    (machine / "data" / "keep.txt").write_text("keep")
    (machine / "data" / "skip.log").write_text("skip")
    snap = backup_files(repo, ["/data"], hostname="h", root=machine, excludes=["/data/*.log"])
    assert snap.paths == ["/data"]
    assert {e.path for e in list_tree(repo, snap.id, "/data")} == {"/data/keep.txt"}
    restore(repo, snap.id, tmp_path / "out")
    assert (tmp_path / "out" / "data" / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*.log", "/var/log/app.log", True),  # no "/": the base name, at any depth
        ("/home/*/.cache", "/home/ann/.cache", True),
        ("/home/*/.cache", "/home/ann/src/.cache", False),  # "*" stays inside one component
        ("/srv/**/*.log", "/srv/a/b/c.log", True),  # "**" spans any depth, including none
        ("/srv/**/*.log", "/srv/c.log", True),
        ("/tmp/*", "/tmp/a/b", False),
        ("/data/file?.bin", "/data/file1.bin", True),
        ("/data/file?.bin", "/data/file/.bin", False),
        ("[!.]*", "visible", True),
        ("[!.]*", ".hidden", False),
        ("[^x]", "^", True),  # a caret is a literal in a glob class
        ("[^x]", "a", False),
        ("a[b", "a[b", True),  # an unclosed bracket is literal
    ],
)
def test_glob_masks(pattern: str, path: str, expected: bool) -> None:
    from cloudkeep.repo.masks import matches

    assert matches(pattern, path) is expected


def test_exclude_mask_stays_in_its_directory_level(repo: Repository, source: Path) -> None:
    snap = backup_files(repo, [source], hostname="h", excludes=[f"{source}/*/deep"])
    paths = {e.path.removeprefix(str(source)) for e in list_tree(repo, snap.id, str(source), recursive=True)}
    assert "/docs/deep" not in paths and "/docs/readme.txt" in paths
    snap = backup_files(repo, [source], hostname="h", excludes=[f"{source}/*/er"])  # er is two levels down
    paths = {e.path.removeprefix(str(source)) for e in list_tree(repo, snap.id, str(source), recursive=True)}
    assert "/docs/deep/er/notes.md" in paths
    snap = backup_files(repo, [source], hostname="h", excludes=[f"{source}/**/er"])
    paths = {e.path.removeprefix(str(source)) for e in list_tree(repo, snap.id, str(source), recursive=True)}
    assert "/docs/deep/er" not in paths and "/docs/deep" in paths
