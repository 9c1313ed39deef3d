"""A restore point's id is bound to its manifest, and one damaged manifest harms only itself.

Swaps (a manifest copied, moved or exchanged under another id) and damage (truncated, garbled,
emptied, malformed though authentic, misnamed) are applied in the root layout and in a writer's
namespace, on the in-memory store, a local folder, and the real peers (moto S3, Azurite).
Version 1 manifests are written here the way cloudkeep wrote them before (random id, constant
associated data) to show that they still open where the repository allows them.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloudkeep.errors import IntegrityError
from cloudkeep.repo import (
    Repository,
    RetentionPolicy,
    backup_files,
    check,
    forget,
    list_snapshots,
    list_tree,
    restore,
)
from cloudkeep.repo.layout import FORMAT_VERSION
from cloudkeep.repo.snapshot import SNAPSHOT_PREFIX, Snapshot
from cloudkeep.storage import ObjectStore, open_store
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, subtree_of
from tests.storage.conftest import make_azure_container, make_s3_bucket

WRITER = "writers/machine-a/"
LEGACY_AAD = b"cloudkeep-snapshot-v1"
CONFIG_AAD = b"cloudkeep-config-v1"


@dataclass
class Points:
    repo: Repository  # opened afresh (no cached keys), full access
    a: Snapshot
    b: Snapshot
    c: Snapshot
    prefix: str  # where the manifests live ("" = root layout)

    def key(self, snap: Snapshot) -> str:
        return f"{self.prefix}{SNAPSHOT_PREFIX}{snap.id}"


def make_source(root: Path, text: str) -> Path:
    (root / "docs").mkdir(parents=True, exist_ok=True)
    (root / "docs" / "note.txt").write_text(text)
    (root / "other.bin").write_bytes(text.encode() * 50)
    return root


def three_points(store: ObjectStore, tmp_path: Path, prefix: str, version: int = FORMAT_VERSION) -> Points:
    """Three restore points of one source with different content, by the root layout or a writer."""
    Repository.create(store, PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=2**20, version=version)
    writer = Repository.open(store, PASSWORD, writer_prefix=prefix or None)
    a, b, c = (
        backup_files(writer, [make_source(tmp_path / "src", text)], hostname="h")
        for text in ("first version\n", "second version\n", "third version\n")
    )
    return Points(Repository.open(store, PASSWORD), a, b, c, prefix)


def restored_text(repo: Repository, snap_id: str, target: Path) -> str:
    restore(repo, snap_id, target)
    (found,) = target.rglob("note.txt")
    return found.read_text()


def assert_refused_everywhere(points: Points, victim: Snapshot, tmp_path: Path) -> None:
    """Every read of ``victim`` fails naming its key; the other points and `check` carry on."""
    repo = Repository.open(points.repo.store, PASSWORD)
    key = points.key(victim)
    for read in (
        lambda: repo.load_snapshot(victim.id),
        lambda: restore(repo, victim.id, tmp_path / "refused"),
        lambda: list(list_tree(repo, victim.id, "/")),
    ):
        with pytest.raises(IntegrityError) as caught:
            read()
        assert key in str(caught.value)
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").rglob("note.txt"))
    listed = {s.id for s in list_snapshots(repo)}
    assert victim.id not in listed and len(listed) == 2
    assert set(repo.unreadable_snapshots) == {key}
    report = check(repo)
    (problem,) = report.problems
    assert (problem.kind, problem.object, problem.snapshots) == ("bad-snapshot", key, [victim.id])
    assert report.snapshots == 3
    survivor = next(s for s in (points.a, points.b, points.c) if s.id in listed)
    assert restored_text(repo, survivor.id, tmp_path / "survivor").endswith("version\n")


# -- the cases, each a way to put the wrong bytes under a restore point's key -------------------


def copy_over(points: Points) -> Snapshot:
    store = points.repo.store
    store.put(points.key(points.b), store.get(points.key(points.a)))
    return points.b


def exchange(points: Points) -> Snapshot:
    """A and B swapped: both must be refused; the test follows B."""
    store = points.repo.store
    body_a, body_b = store.get(points.key(points.a)), store.get(points.key(points.b))
    store.put(points.key(points.a), body_b)
    store.put(points.key(points.b), body_a)
    return points.b


def move_under_new_id(points: Points) -> Snapshot:
    store = points.repo.store
    fake = Snapshot(secrets.token_hex(32), points.b.time, "h", [], [], "files")
    store.put(points.key(fake), store.get(points.key(points.b)))
    store.delete(points.key(points.b))
    return fake


def truncate(points: Points) -> Snapshot:
    store = points.repo.store
    store.put(points.key(points.b), store.get(points.key(points.b))[:20])
    return points.b


def garble(points: Points) -> Snapshot:
    store = points.repo.store
    body = bytearray(store.get(points.key(points.b)))
    body[len(body) // 2] ^= 0x40
    store.put(points.key(points.b), bytes(body))
    return points.b


def empty(points: Points) -> Snapshot:
    points.repo.store.put(points.key(points.b), b"")
    return points.b


def authentic_but_malformed(points: Points) -> Snapshot:
    """Sealed with the key, under its own content id, but not a manifest (what a key holder can do)."""
    crypter = points.repo.crypter
    plain = json.dumps({"version": 2, "tree": "../../etc"}).encode()
    snap_id = crypter.content_id(plain).hex()
    fake = Snapshot(snap_id, points.b.time, "h", [], [], "files")
    points.repo.store.put(
        points.key(fake), crypter.encode(plain, b"cloudkeep-snapshot-v2:" + snap_id.encode())
    )
    points.repo.store.delete(points.key(points.b))
    return fake


def misnamed(points: Points) -> Snapshot:
    fake = Snapshot("not-a-restore-point", points.b.time, "h", [], [], "files")
    store = points.repo.store
    store.put(points.key(fake), store.get(points.key(points.b)))
    store.delete(points.key(points.b))
    return fake


CASES: dict[str, Callable[[Points], Snapshot]] = {
    "copy_over": copy_over,
    "exchange": exchange,
    "move_under_new_id": move_under_new_id,
    "truncate": truncate,
    "garble": garble,
    "empty": empty,
    "authentic_but_malformed": authentic_but_malformed,
    "misnamed": misnamed,
}


@pytest.fixture(params=["memory", "file"])
def local_store(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str) -> Iterator[ObjectStore]:
    url = f"memory://{unique_name}" if request.param == "memory" else f"file://{tmp_path}/repo"
    opened = open_store(url)
    yield opened
    opened.close()


@pytest.mark.parametrize("prefix", ["", WRITER], ids=["root", "writer"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_swapped_or_damaged_manifest_is_refused_and_contained(
    local_store: ObjectStore, tmp_path: Path, prefix: str, case: str
) -> None:
    points = three_points(local_store, tmp_path, prefix)
    victim = CASES[case](points)
    if case == "exchange":  # A holds B's manifest now: refused too
        with pytest.raises(IntegrityError, match=points.key(points.a)):
            Repository.open(local_store, PASSWORD).load_snapshot(points.a.id)
        repo = Repository.open(local_store, PASSWORD)
        assert [s.id for s in list_snapshots(repo)] == [points.c.id]
        assert {p.object for p in check(repo).problems} == {points.key(points.a), points.key(points.b)}
        return
    assert_refused_everywhere(points, victim, tmp_path)


@pytest.mark.parametrize("peer", ["s3", "azure"])
def test_a_copied_manifest_is_refused_on_real_peers(
    request: pytest.FixtureRequest, peer: str, tmp_path: Path, unique_name: str
) -> None:
    if peer == "s3":
        aws = request.getfixturevalue("aws_options")
        make_s3_bucket(aws, unique_name)
        store = open_store(f"s3://{unique_name}/backups", **aws)
    else:
        azurite = request.getfixturevalue("azurite")
        make_azure_container(azurite, unique_name)
        store = open_store(f"azure://{unique_name}/backups", connection_string=azurite.connection_string)
    try:
        points = three_points(store, tmp_path, WRITER)
        assert_refused_everywhere(points, copy_over(points), tmp_path)
    finally:
        store.close()


def test_forget_works_over_the_readable_points_and_keeps_the_damaged_one(
    local_store: ObjectStore, tmp_path: Path
) -> None:
    points = three_points(local_store, tmp_path, WRITER)
    garble(points)
    repo = Repository.open(local_store, PASSWORD)
    result = forget(repo, RetentionPolicy(keep_last=1), now=datetime.now(UTC) + timedelta(days=1))
    assert (result.kept, result.removed) == ([points.c.id], [points.a.id])
    assert local_store.exists(points.key(points.b))  # what cannot be read is never judged
    assert set(repo.unreadable_snapshots) == {points.key(points.b)}


def test_listing_refreshes_unreadable_snapshots(local_store: ObjectStore, tmp_path: Path) -> None:
    points = three_points(local_store, tmp_path, "")
    body = local_store.get(points.key(points.b))
    truncate(points)
    repo = Repository.open(local_store, PASSWORD)
    assert len(list(repo.snapshots())) == 2 and repo.unreadable_snapshots
    local_store.put(points.key(points.b), body)  # repaired
    assert len(list(repo.snapshots())) == 3 and repo.unreadable_snapshots == {}


def test_new_ids_are_keyed_hashes_of_the_manifest(local_store: ObjectStore, tmp_path: Path) -> None:
    points = three_points(local_store, tmp_path, "")
    repo = points.repo
    for snap in (points.a, points.b, points.c):
        loaded = repo.load_snapshot(snap.id)
        assert len(snap.id) == 64 and loaded.digest == snap.id and not loaded.legacy
        assert repo.load_snapshot(snap.id[:10]).id == snap.id
    source = make_source(tmp_path / "same", "same\n")
    twins = [backup_files(repo, [source], hostname="h") for _ in range(2)]
    # Same content, same source tree (the folders above it change with other processes), new id: the nonce.
    assert subtree_of(repo, twins[0].tree, source) == subtree_of(repo, twins[1].tree, source)
    assert twins[0].id != twins[1].id


def write_legacy_manifest(repo: Repository, like: Snapshot) -> str:
    """A manifest as cloudkeep wrote them before: random 32-hex id, constant associated data."""
    snap_id = secrets.token_hex(16)
    body = {
        "version": 1,
        "time": (like.time - timedelta(days=1)).isoformat(),
        "hostname": "old-host",
        "tags": [],
        "paths": like.paths,
        "kind": "files",
        "stats": {},
        "tree": like.tree,
        "retain_until": None,
    }
    repo.store.put(SNAPSHOT_PREFIX + snap_id, repo.crypter.encode(json.dumps(body).encode(), LEGACY_AAD))
    return snap_id


def as_format_1(store: ObjectStore) -> None:
    """Rewrite the config as a repository created before content-addressed manifests."""
    repo = Repository.open(store, PASSWORD)
    config = {**repo.config.to_json(), "version": 1}
    store.put("config", repo.crypter.encode(json.dumps(config).encode(), CONFIG_AAD))


def test_legacy_manifest_still_opens_in_a_format_1_repository(
    local_store: ObjectStore, tmp_path: Path
) -> None:
    points = three_points(local_store, tmp_path, "", version=2)  # formats 1-2 only
    as_format_1(local_store)
    repo = Repository.open(local_store, PASSWORD)
    old_id = write_legacy_manifest(repo, points.a)
    old = repo.load_snapshot(old_id)
    assert old.legacy and old.hostname == "old-host" and len(old.digest) == 64
    assert old_id in {s.id for s in list_snapshots(repo)} and repo.unreadable_snapshots == {}
    assert restored_text(repo, old_id, tmp_path / "out") == "first version\n"
    report = check(repo)
    assert report.ok, report.problems
    assert [w for w in report.warnings if old_id in w and "version 1" in w]
    # What a version 1 manifest still suffers: another one copied over it opens under its id. Only
    # its digest tells, which is what the server's catalog pins at backup time.
    other_id = write_legacy_manifest(repo, points.c)
    local_store.put(SNAPSHOT_PREFIX + old_id, local_store.get(SNAPSHOT_PREFIX + other_id))
    swapped = Repository.open(local_store, PASSWORD).load_snapshot(old_id)
    assert swapped.tree == points.c.tree and swapped.digest != old.digest
    # a content-addressed manifest cannot pose as a version 1 one (different associated data)
    local_store.put(SNAPSHOT_PREFIX + old_id, local_store.get(points.key(points.b)))
    with pytest.raises(IntegrityError, match=SNAPSHOT_PREFIX + old_id):
        Repository.open(local_store, PASSWORD).load_snapshot(old_id)


def test_legacy_manifest_is_refused_in_a_format_2_repository(
    local_store: ObjectStore, tmp_path: Path
) -> None:
    points = three_points(local_store, tmp_path, "", version=2)  # formats 1-2 only
    repo = Repository.open(local_store, PASSWORD)
    assert repo.config.version == 2
    planted = write_legacy_manifest(repo, points.a)
    with pytest.raises(IntegrityError, match="version 1"):
        repo.load_snapshot(planted)
    assert len(list_snapshots(repo)) == 3 and set(repo.unreadable_snapshots) == {SNAPSHOT_PREFIX + planted}
    (problem,) = check(repo).problems
    assert problem.object == SNAPSHOT_PREFIX + planted


def test_check_warns_about_one_id_in_two_namespaces(local_store: ObjectStore, tmp_path: Path) -> None:
    points = three_points(local_store, tmp_path, WRITER)
    other = f"writers/machine-b/{SNAPSHOT_PREFIX}{points.a.id}"
    local_store.put(other, local_store.get(points.key(points.a)))  # identical content: readable
    report = check(Repository.open(local_store, PASSWORD))
    assert report.ok
    assert [w for w in report.warnings if points.a.id in w and "2 times" in w]
