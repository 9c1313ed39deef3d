"""Small files reach the pool in batches (repo/filecontent.py): fewer jobs, the same restore point,
per-file errors, progress and cancellation; and new repositories chunk finer while existing ones
keep the parameters in their config."""

from __future__ import annotations

import io
import os
import random
import subprocess
from pathlib import Path

import pytest

from cloudkeep.repo import (
    BackupProgress,
    Repository,
    backup_files,
    filecontent,
    list_snapshots,
    list_tree,
    restore,
)
from cloudkeep.repo import archiver as archiver_module
from cloudkeep.repo.browse import lookup
from cloudkeep.repo.chunker import ChunkerParams, StreamCutter
from cloudkeep.storage import ObjectStore
from tests.repo.conftest import FAST_KDF, PASSWORD, restored


def _many_small_files(root: Path, folders: int = 6, per_folder: int = 40) -> dict[str, bytes]:
    """Folders of small files (text and random, one empty per folder), keyed by relative path."""
    rng = random.Random(11)
    made: dict[str, bytes] = {}
    for f in range(folders):
        folder = root / f"dir{f}" / "sub"
        folder.mkdir(parents=True)
        for i in range(per_folder):
            data = b"" if i == 0 else (rng.randbytes(rng.randrange(1, 9000)) if i % 2 else b"line\n" * i)
            (folder / f"file{i:03}").write_bytes(data)
            made[f"dir{f}/sub/file{i:03}"] = data
    return made


def _count_jobs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the number of files in every pool job."""
    sizes: list[int] = []
    real = archiver_module._Archiver.file_job

    def file_job(self, files):  # type: ignore[no-untyped-def]
        sizes.append(len(files))
        return real(self, files)

    monkeypatch.setattr(archiver_module._Archiver, "file_job", file_job)
    return sizes


def test_many_small_files_take_few_jobs_and_restore_equal(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    made = _many_small_files(src)
    big = random.Random(5).randbytes(3 * repo.config.chunker.max_size // 2)  # chunked on its own job
    (src / "big.bin").write_bytes(big)
    jobs = _count_jobs(monkeypatch)
    snap = backup_files(repo, [src], hostname="h", threads=2)
    assert snap.stats["files"] == len(made) + 1 and snap.stats["errors_total"] == 0
    assert sum(jobs) == len(made) + 1
    assert len(jobs) <= len(made) // 8  # batched: not one job per file
    assert max(jobs) == filecontent.BATCH_FILES and 1 in jobs  # full batches, and the big file alone
    result = restore(repo, snap.id, tmp_path / "out")
    assert result.files == len(made) + 1
    out = restored(tmp_path / "out", src)
    assert subprocess.run(["diff", "-r", "--no-dereference", str(src), str(out)]).returncode == 0
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("file*")} == made


def test_a_batch_is_cut_by_its_bytes_too(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    size = repo.config.chunker.min_size - 1
    for i in range(12):
        (src / f"f{i:02}").write_bytes(random.Random(i).randbytes(size))
    monkeypatch.setattr(filecontent, "BATCH_BYTES", 4 * size)
    jobs = _count_jobs(monkeypatch)
    backup_files(repo, [src], hostname="h")
    assert jobs == [4, 4, 4]


def test_an_unreadable_file_in_a_batch_is_skipped_alone(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root reads anything, so one read failure is injected in the middle of a batch."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        (src / f"f{i}").write_text(f"content {i}\n" * 50)
    real = archiver_module._Archiver.small_file

    def small_file(self, fd, path, size):  # type: ignore[no-untyped-def]
        if path.endswith("/f4"):
            raise PermissionError(13, "Permission denied")
        return real(self, fd, path, size)

    monkeypatch.setattr(archiver_module._Archiver, "small_file", small_file)
    jobs = _count_jobs(monkeypatch)
    snap = backup_files(repo, [src], hostname="h")
    assert jobs == [10]  # f4 was read in the same job as the others
    assert snap.stats["errors_total"] == 1
    assert snap.stats["errors"] == [{"path": f"{src}/f4", "error": "cannot read (Permission denied)"}]
    names = {e.path for e in list_tree(repo, snap.id, str(src))}
    assert names == {f"{src}/f{i}" for i in range(10) if i != 4}
    restore(repo, snap.id, tmp_path / "out")
    out = restored(tmp_path / "out", src)
    assert all((out / f"f{i}").read_text() == f"content {i}\n" * 50 for i in range(10) if i != 4)


def test_cancelling_mid_batch_reads_no_more_and_commits_nothing(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first progress report (after the first file read) cancels: the rest of its batch and
    every batch queued after it only fill their slots, and no restore point appears."""
    src = tmp_path / "src"
    made = _many_small_files(src, folders=3, per_folder=30)
    reads: list[str] = []
    real = archiver_module._Archiver.read_entry

    def read_entry(self, item, *opened):  # type: ignore[no-untyped-def]
        reads.append(item.path)
        return real(self, item, *opened)

    monkeypatch.setattr(archiver_module._Archiver, "read_entry", read_entry)
    jobs = _count_jobs(monkeypatch)

    class Cancelled(Exception):
        pass

    def progress(p: BackupProgress) -> None:
        if p.current_path is not None:
            raise Cancelled(p.current_path)

    fds_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(Cancelled):
        backup_files(repo, [src], hostname="h", progress=progress, threads=1)
    assert len(reads) == 1 and jobs and jobs[0] == filecontent.BATCH_FILES < len(made)
    assert list(list_snapshots(repo)) == []
    assert set(os.listdir("/proc/self/fd")) <= fds_before  # every folder closed


def test_a_batch_asks_for_all_its_files_before_it_reads_the_first(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a cold cache each small file read alone waits for its own disk read: a batch read in
    the process opens its files and asks for their content first (``chunker.open_ahead``), then
    reads them; empty files are not opened, and every descriptor is closed by the batch's end."""
    src = tmp_path / "src"
    made = _many_small_files(src, folders=2, per_folder=20)
    events: list[str] = []
    real_advise, real_small = os.posix_fadvise, archiver_module._Archiver.small_file

    def advise(fd: int, offset: int, length: int, advice: int) -> None:
        events.append("advise")
        real_advise(fd, offset, length, advice)

    def small_file(self, fd, path, size):  # type: ignore[no-untyped-def]
        events.append("read")
        return real_small(self, fd, path, size)

    monkeypatch.setattr(os, "posix_fadvise", advise)
    monkeypatch.setattr(archiver_module._Archiver, "small_file", small_file)
    jobs = _count_jobs(monkeypatch)
    fds_before = set(os.listdir("/proc/self/fd"))
    snap = backup_files(repo, [src], hostname="h", threads=1, processes=False)
    assert set(os.listdir("/proc/self/fd")) <= fds_before
    assert jobs == [16, 16, 8]  # batches run across folders; the first two hold an empty file each
    assert events == (["advise"] * 15 + ["read"] * 15) * 2 + ["advise"] * 8 + ["read"] * 8
    restore(repo, snap.id, tmp_path / "out")
    out = restored(tmp_path / "out", src)
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == made


def test_new_repositories_chunk_finer(store: ObjectStore) -> None:
    repo = Repository.create(store, PASSWORD, kdf=FAST_KDF)
    params = repo.config.chunker
    assert (params.min_size, params.avg_size, params.max_size) == (128 * 1024, 512 * 1024, 8 * 2**20)


def test_a_repository_with_the_old_chunk_parameters_keeps_them(store: ObjectStore, tmp_path: Path) -> None:
    """Its config holds 256 KiB / 1 MiB / 8 MiB: reopened, it chunks with those, so a file backed up
    again dedups against what it already holds."""
    old = ChunkerParams(min_size=256 * 1024, avg_size=1024 * 1024, max_size=8 * 2**20, seed=99)
    Repository.create(store, PASSWORD, kdf=FAST_KDF, chunker=old)
    repo = Repository.open(store, PASSWORD)
    assert repo.config.chunker == old
    data = random.Random(8).randbytes(12 * 2**20)
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.bin").write_bytes(data)
    snap = backup_files(repo, [src], hostname="h")
    content = lookup(repo, snap.id, str(src / "data.bin")).content

    def ids(params: ChunkerParams) -> list[bytes]:
        return [repo.crypter.content_id(bytes(c)) for c in StreamCutter(params).cut(io.BytesIO(data))]

    finer = ChunkerParams(seed=old.seed)  # today's defaults, same seed
    assert content == ids(old) and content != ids(finer)
    again = backup_files(Repository.open(store, PASSWORD), [src], hostname="h")
    assert again.stats["bytes_new"] < 64 * 1024  # only the trees: every chunk was there already
