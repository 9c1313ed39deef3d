"""``check`` and damage: exactly what is broken, which restore points it hurts; the rest stays usable."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from cloudkeep.errors import IntegrityError
from cloudkeep.repo import Repository, backup_files, cat_file, check, rebuild_index, restore
from cloudkeep.repo.pack import pack_key
from cloudkeep.storage import ObjectStore
from tests.repo.conftest import PASSWORD, restored


def two_snapshots(repo: Repository, tmp_path: Path) -> tuple[str, str, Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "only-a.bin").write_bytes(__import__("random").Random(1).randbytes(2**20))
    (b / "only-b.bin").write_bytes(__import__("random").Random(2).randbytes(2**20))
    return backup_files(repo, [a], hostname="h").id, backup_files(repo, [b], hostname="h").id, a, b


def pack_of(repo: Repository, snapshot_id: str, path: str) -> str:
    from cloudkeep.repo.browse import lookup

    return repo.locate(lookup(repo, snapshot_id, path).content[0]).pack_id


def test_healthy_repository_checks_ok(repo: Repository, tmp_path: Path) -> None:
    two_snapshots(repo, tmp_path)
    report = check(repo, read_data=True)
    assert report.ok and report.snapshots == 2 and report.packs_read == report.packs > 0


def test_corrupted_pack_found_only_by_read_data(repo: Repository, store: ObjectStore, tmp_path: Path) -> None:
    sid_a, sid_b, a, b = two_snapshots(repo, tmp_path)
    pack = pack_of(repo, sid_a, f"{a}/only-a.bin")
    body = bytearray(store.get(pack_key(pack)))
    first = min(entry.offset for entry in repo.index.packs[pack])  # after format 3's wrapped key
    body[first + 100] ^= 0xFF  # flip one bit inside the first blob
    store.put(pack_key(pack), bytes(body))
    assert check(repo).ok  # structure alone cannot see a flipped bit
    report = check(repo, read_data=True)
    assert not report.ok
    kinds = {p.kind for p in report.problems}
    assert kinds == {"corrupt-pack", "corrupt-blob"}
    blob_problem = next(p for p in report.problems if p.kind == "corrupt-blob")
    assert blob_problem.snapshots == [sid_a] and pack in blob_problem.object
    with pytest.raises(IntegrityError, match="authentication failed"):
        cat_file(repo, sid_a, f"{a}/only-a.bin", io.BytesIO())
    restore(repo, sid_b, tmp_path / "out")  # the other restore point is intact
    assert restored(tmp_path / "out", b / "only-b.bin").read_bytes() == (b / "only-b.bin").read_bytes()


def test_truncated_pack(repo: Repository, store: ObjectStore, tmp_path: Path) -> None:
    sid_a, _, a, _ = two_snapshots(repo, tmp_path)
    pack = pack_of(repo, sid_a, f"{a}/only-a.bin")
    store.put(pack_key(pack), store.get(pack_key(pack))[:1000])
    report = check(repo)
    problem = next(p for p in report.problems if p.kind == "truncated-pack")
    assert pack in problem.object and problem.snapshots == [sid_a]
    with pytest.raises(IntegrityError, match="truncated"):
        restore(repo, sid_a, tmp_path / "out")


def test_missing_pack(repo: Repository, store: ObjectStore, tmp_path: Path) -> None:
    sid_a, _, a, _ = two_snapshots(repo, tmp_path)
    pack = pack_of(repo, sid_a, f"{a}/only-a.bin")
    store.delete(pack_key(pack))
    report = check(repo)
    problem = next(p for p in report.problems if p.kind == "missing-pack")
    assert problem.snapshots == [sid_a]
    with pytest.raises(IntegrityError, match="missing"):
        cat_file(repo, sid_a, f"{a}/only-a.bin", io.BytesIO())


def test_missing_index_reported_then_rebuilt(repo: Repository, store: ObjectStore, tmp_path: Path) -> None:
    sid_a, sid_b, a, _ = two_snapshots(repo, tmp_path)
    for info in list(store.list("index/")):
        store.delete(info.key)
    reopened = Repository.open(store, PASSWORD)
    with pytest.raises(IntegrityError, match="not in the index"):
        restore(reopened, sid_a, tmp_path / "out")
    report = check(reopened)
    assert not report.ok and {p.kind for p in report.problems} == {"bad-tree"}
    assert sorted(s for p in report.problems for s in p.snapshots) == sorted([sid_a, sid_b])
    assert any("not in the index" in w for p in report.problems for w in [p.message])
    assert rebuild_index(reopened) > 0
    assert check(reopened, read_data=True).ok
    restore(reopened, sid_a, tmp_path / "out")
    assert restored(tmp_path / "out", a / "only-a.bin").read_bytes() == (a / "only-a.bin").read_bytes()


def test_corrupt_snapshot_manifest(repo: Repository, store: ObjectStore, tmp_path: Path) -> None:
    sid_a, _, _, _ = two_snapshots(repo, tmp_path)
    store.put(f"snapshots/{sid_a}", b"garbage" * 10)
    report = check(repo)
    assert [(p.kind, p.snapshots) for p in report.problems] == [("bad-snapshot", [sid_a])]


def test_read_data_subset(repo: Repository, tmp_path: Path) -> None:
    two_snapshots(repo, tmp_path)
    report = check(repo, read_data_subset=0.5)
    assert report.ok and 0 < report.packs_read < report.packs
