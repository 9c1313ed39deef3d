"""A backup never runs out of descriptors of its own making (repo/descriptors.py): folders wait
open for their queued files, and past the budget the walk waits for them, not the kernel's limit.

Each backup runs in a child process whose hard ``RLIMIT_NOFILE`` is set low first (a hard limit
cannot be raised back, so not in the test process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from cloudkeep.repo.descriptors import (
    FEWEST_FOLDERS,
    RESERVE,
    TARGET_FOLDERS_FEWEST,
    folder_budget,
    target_folders,
)

DEADLINE_S = 120.0

# Backs up argv[2] into a new repository at argv[3] with worker processes from the first byte
# (batches of ``PROC_BATCH_FILES``, as a large backup has them) under a soft and hard limit of
# argv[1] descriptors; prints the stats, the budget and how often the walk waited for room.
_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    from cloudkeep.repo import KdfParams, Repository, archiver, backup_files
    from cloudkeep.storage import open_store
    waits, limits = [0], []
    real_room = archiver._Archiver.folder_room
    def folder_room(self):
        waits[0] += 1
        limits.append(self.folder_limit)
        real_room(self)
    archiver._Archiver.folder_room = folder_room
    repo = Repository.create(open_store("file://" + sys.argv[3]), "pw", kdf=KdfParams(n=2**10))
    snap = backup_files(repo, [Path(sys.argv[2])], hostname="t", processes=True, threads=2)
    stats = {k: snap.stats[k] for k in ("files", "dirs", "errors_total", "warnings")}
    print(json.dumps({**stats, "waits": waits[0], "limits": sorted(set(limits))}))
    """
)


def _child(code: str, *args: object) -> Any:
    """Run ``code`` in a new interpreter with ``args``: what its last line of output says (JSON)."""
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=DEADLINE_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _backup_under(limit: int, source: Path, repo_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = _child(_CHILD, limit, source, repo_dir)
    return result


def test_many_folders_of_one_file_each_are_all_backed_up_under_a_low_limit(tmp_path: Path) -> None:
    """2,000 folders of one small file each: every folder waits open for its file, and 16 queued
    batches of ``PROC_BATCH_FILES`` files name up to 16 times as many folders, past a limit of
    384. Without the budget the folders opened then were backed up empty ("cannot list (Too many
    open files)")."""
    source = tmp_path / "src"
    for i in range(2000):
        folder = source / f"g{i // 100:02}" / f"f{i:04}"
        folder.mkdir(parents=True)
        (folder / "one").write_text(f"file {i}\n" * (1 + i % 7))
    result = _backup_under(384, source, tmp_path / "repo")
    assert result["errors_total"] == 0, result["warnings"]
    assert result["files"] == 2000
    assert result["dirs"] == 2000 + 20 + 1
    assert result["waits"] > 0  # the budget was reached, and waited for
    assert result["limits"] == [FEWEST_FOLDERS]  # 384 - RESERVE - 2 threads' batches is below it


def test_a_path_deeper_than_the_budget_is_walked(tmp_path: Path) -> None:
    """The folders the walk holds (its own path) are never waited for: 150 nested folders, with
    files at every level, go past the budget of 64 and the backup ends, whole."""
    folder = source = tmp_path / "src"
    for depth in range(150):
        folder = folder / f"d{depth}"
        folder.mkdir(parents=True)
        for i in range(3):
            (folder / f"f{i}").write_text(f"{depth} {i}\n")
    result = _backup_under(384, source, tmp_path / "repo")
    assert result["errors_total"] == 0, result["warnings"]
    assert (result["files"], result["dirs"]) == (450, 151)
    assert result["waits"] > 0


# Backs up and restores argv[2] with the soft limit lowered to argv[1], and with argv[5] "hard" the
# hard one too for the restore (its worker process inherits both).
_RESTORE = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    def lower(hard=None):
        hard = hard or resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))
    lower()
    from cloudkeep.repo import KdfParams, Repository, backup_files, restore
    from cloudkeep.storage import open_store
    repo = Repository.create(open_store("file://" + sys.argv[3]), "pw", kdf=KdfParams(n=2**10))
    snap = backup_files(repo, [Path(sys.argv[2])], hostname="t", processes=True, threads=2)
    lower(int(sys.argv[1]) if sys.argv[5] == "hard" else None)  # the backup raised it
    result = restore(Repository.open(open_store("file://" + sys.argv[3]), "pw"), snap.id, Path(sys.argv[4]))
    print(json.dumps([result.ok, len(result.errors), snap.stats["files"]]))
    """
)


def _restored_under(limit: int, which: str, tmp_path: Path) -> None:
    """1,500 folders of one small file each (and files large enough for several chunks), backed
    up, then restored under a limit of ``limit`` descriptors, soft or hard: every file comes back."""
    source = tmp_path / "src"
    for i in range(1500):
        folder = source / f"g{i // 100:02}" / f"f{i:04}"
        folder.mkdir(parents=True)
        (folder / "one").write_text(f"file {i}\n" * (1 + i % 7))
    for i in range(40):
        (source / "large").mkdir(exist_ok=True)
        (source / "large" / f"m{i}").write_bytes(bytes([i]) * (3 * 2**20 + i))
    target = tmp_path / "out"
    assert _child(_RESTORE, limit, source, tmp_path / "repo", target, which) == [True, 0, 1540]
    restored = target / str(source).lstrip("/")
    assert sorted(p.read_bytes() for p in restored.rglob("*") if p.is_file()) == sorted(
        p.read_bytes() for p in source.rglob("*") if p.is_file()
    )


def test_a_restore_under_a_low_soft_limit_raises_it_first(tmp_path: Path) -> None:
    """At a soft limit of 256 a restore of many folders ran out of descriptors opening packs."""
    _restored_under(256, "soft", tmp_path)


def test_a_restore_under_a_low_hard_limit_keeps_fewer_folders_open(tmp_path: Path) -> None:
    """At a hard limit of 256 or below the restore's 256 open target folders (in the parent and in
    its worker process) left no descriptor for a pack: it failed (EMFILE). Half the limit now."""
    _restored_under(64, "hard", tmp_path)


def test_a_restore_keeps_half_the_limit_for_its_folders() -> None:
    assert target_folders(65536, 256) == 256
    assert target_folders(256, 256) == 128
    assert target_folders(10, 256) == TARGET_FOLDERS_FEWEST


_RAISE = textwrap.dedent(
    """
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))
    from cloudkeep.repo.descriptors import raise_open_files
    got = raise_open_files(int(sys.argv[3]))
    print(json.dumps([got, resource.getrlimit(resource.RLIMIT_NOFILE)[0]]))
    """
)


def _raise(soft: int, hard: int, wanted: int) -> list[int]:
    result: list[int] = _child(_RAISE, soft, hard, wanted)
    return result


def test_the_soft_limit_is_raised_toward_the_hard_one() -> None:
    assert _raise(300, 5000, 4096) == [4096, 4096]  # as far as wanted
    assert _raise(300, 2000, 4096) == [2000, 2000]  # as far as the hard limit allows
    assert _raise(3000, 5000, 2048) == [3000, 3000]  # never lowered


def test_the_budget_leaves_the_reserve_and_the_batches_their_descriptors() -> None:
    assert folder_budget(65536, 4, 256) == 65536 - RESERVE - 1024
    assert folder_budget(1024, 2, 64) == 1024 - RESERVE - 128
    assert folder_budget(256, 8, 256) == FEWEST_FOLDERS
