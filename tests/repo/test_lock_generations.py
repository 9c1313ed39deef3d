"""Immutability by block generations on the in-memory store (which models S3 default retention and
versioning); the same rules against moto, with request counts, are in tests/repo/test_lock_requests.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cloudkeep.compat import UTC
from cloudkeep.errors import CloudkeepError, ConfigurationError, IntegrityError
from cloudkeep.repo import Repository, backup_files, check, prune, restore
from cloudkeep.repo.generations import (
    HORIZON_KEY,
    LockHorizon,
    enable_generations,
    extend_locks,
    read_horizon,
    write_horizon,
)
from cloudkeep.repo.index import Index, decode_index_file, encode_index_file, read_index_file
from cloudkeep.repo.migrate import migrate_to_confidential
from cloudkeep.repo.pack import DATA, BlobEntry
from cloudkeep.repo.prune import used_blobs
from cloudkeep.repo.vouch import vouch_new_packs
from cloudkeep.repo.writer import BlobWriter
from cloudkeep.storage.memory import MemoryStore
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, restored
from tests.support.clock import FIXED_NOW, SetClock

R, G = 30, 7  # retention and generation (days)
# New bytes a backup of unchanged files still stores: the trees of the source's parent folders, which
# carry the mtime of /tmp (other processes change it). Every data chunk is far bigger.
PARENTS = 1024


class CountingStore(MemoryStore):
    """The memory store, counting the lock-related requests a writer or the server sends."""

    def __init__(self, name: str, clock: SetClock) -> None:
        super().__init__(name, clock=clock)
        self.pack_heads = 0
        self.retention_puts = 0
        self.explicit_locks = 0  # puts that asked for a lock (S3: needs s3:PutObjectRetention)

    def stat(self, key: str):  # type: ignore[no-untyped-def]
        if "data/" in key:
            self.pack_heads += 1
        return super().stat(key)

    def _set_retention(self, key: str, until: datetime) -> None:
        self.retention_puts += 1
        super()._set_retention(key, until)

    def put(
        self, key: str, data: bytes, *, if_absent: bool = False, retain_until: datetime | None = None
    ) -> None:
        self.explicit_locks += retain_until is not None
        super().put(key, data, if_absent=if_absent, retain_until=retain_until)

    def reset(self) -> None:
        self.pack_heads = self.retention_puts = self.explicit_locks = 0


@pytest.fixture
def clock() -> SetClock:
    """One time for the store (it locks by it), every writer (pack write times) and the server's calls."""
    return SetClock()


@pytest.fixture
def counting(clock: SetClock) -> Iterator[CountingStore]:
    name = "gen-" + uuid.uuid4().hex
    yield CountingStore(name, clock)
    MemoryStore.forget(name)


def _repo(store: CountingStore, *, generations: bool = True) -> Repository:
    repo = Repository.create(store, PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=512 * 1024)
    if generations:
        enable_generations(repo, retention_days=R, generation_days=G)
    return repo


def test_writer_asks_for_no_lock_and_the_store_locks_everything(
    clock: SetClock, counting: CountingStore, source: Path
) -> None:
    repo = _repo(counting)
    now = clock.now
    counting.reset()
    first = backup_files(repo, [source], hostname="h", retain_until=now + timedelta(days=R), wall_clock=clock)
    second = backup_files(
        repo, [source], hostname="h", retain_until=now + timedelta(days=R), wall_clock=clock
    )
    assert (counting.pack_heads, counting.retention_puts, counting.explicit_locks) == (0, 0, 0)
    assert second.stats["bytes_new"] < PARENTS  # day-old packs cover the retention: all reused
    floor = now + timedelta(days=R + G) - timedelta(minutes=5)
    for prefix in ("data/", "index/", "snapshots/"):
        infos = list(counting.list(prefix))
        assert infos and all(i.retain_until is not None and i.retain_until >= floor for i in infos), prefix
    assert list(counting.list("sessions/")) == []  # the locked markers are hidden (a versioned store)
    assert first.retain_until == now + timedelta(days=R)  # the manifest still says how long it is kept
    restore(Repository.open(counting, PASSWORD), second.id, Path(source).parent / "out")
    assert (restored(Path(source).parent / "out", source) / "blob.bin").read_bytes() == (
        source / "blob.bin"
    ).read_bytes()


def test_packs_whose_lock_ends_too_soon_are_written_again(
    clock: SetClock, counting: CountingStore, source: Path
) -> None:
    repo = _repo(counting)
    now = clock.now
    first = backup_files(repo, [source], hostname="h", retain_until=now + timedelta(days=R), wall_clock=clock)
    old_packs = {i.key for i in counting.list("data/")}
    later = now + timedelta(days=G + 1)  # the first packs' default lock ends before later + R
    clock.now = later
    cache = Path(source).parent / "cache"
    second = backup_files(
        repo,
        [source],
        hostname="h",
        retain_until=later + timedelta(days=R),
        wall_clock=clock,
        cache_dir=cache,
    )
    assert second.stats["bytes_new"] > first.stats["bytes_new"] - PARENTS  # every chunk stored once more
    new_packs = {i.key for i in counting.list("data/")} - old_packs
    assert new_packs
    fresh = Repository.open(counting, PASSWORD)
    # the index now points each chunk at its freshest copy: a third backup reuses it all
    third = backup_files(
        fresh,
        [source],
        hostname="h",
        retain_until=later + timedelta(days=R),
        wall_clock=clock,
        cache_dir=cache,
    )
    assert third.stats["bytes_new"] < PARENTS
    assert third.stats["files_unchanged"] > 0  # the file cache's chunks are covered again
    assert check(Repository.open(counting, PASSWORD), read_data=True).ok


def test_cached_files_in_uncovered_packs_are_read_again(
    clock: SetClock, counting: CountingStore, source: Path
) -> None:
    repo = _repo(counting)
    now = clock.now
    cache = Path(source).parent / "cache"
    first = backup_files(
        repo, [source], hostname="h", retain_until=now + timedelta(days=R), cache_dir=cache, wall_clock=clock
    )
    later = clock.now = now + timedelta(days=G + 1)
    second = backup_files(
        repo,
        [source],
        hostname="h",
        retain_until=later + timedelta(days=R),
        wall_clock=clock,
        cache_dir=cache,
    )
    assert second.stats["files_unchanged"] == 1  # only the empty file (no chunks): nothing taken on trust
    assert second.stats["bytes_read"] == second.stats["bytes_total"]
    assert second.stats["bytes_new"] > first.stats["bytes_new"] - PARENTS  # and stored again
    repo = Repository.open(counting, PASSWORD)
    written = {repo.index.written.get(p) for p in _packs_of(repo, second.id)}
    assert written == {int(later.timestamp())}  # every chunk it uses lies in a pack written at `later`


def _packs_of(repo: Repository, snapshot_id: str) -> set[str]:
    used = used_blobs(repo, {snapshot_id})
    return {loc.pack_id for loc in (repo.index.get(b) for b in used) if loc is not None}


def test_retention_longer_than_the_default_lock_is_refused(counting: CountingStore) -> None:
    repo = _repo(counting)
    with pytest.raises(ConfigurationError, match="longer than the repository's default lock"):
        BlobWriter(repo, retain_until=FIXED_NOW + timedelta(days=R + G + 1))


def test_server_extends_referenced_packs_once_per_generation(
    clock: SetClock, counting: CountingStore, source: Path
) -> None:
    repo = _repo(counting)
    now = clock.now
    backup_files(repo, [source], hostname="h", retain_until=now + timedelta(days=R), wall_clock=clock)
    packs = [i.key for i in counting.list("data/")]
    later = clock.now = now + timedelta(days=G)
    counting.reset()
    result = extend_locks(Repository.open(counting, PASSWORD), now=later)
    until = later + timedelta(days=R + G)
    assert (result.extended, result.read_once, result.until) == (len(packs), 0, until)
    assert (counting.retention_puts, counting.pack_heads) == (len(packs), 0)  # no HEAD: locks are known
    assert all(counting.stat(k).retain_until == until for k in packs)  # type: ignore[union-attr]
    horizon = read_horizon(repo)
    assert horizon is not None and horizon.extended_at == later and len(horizon.packs) == len(packs)
    after = clock.now = later + timedelta(days=G - 1)
    skipped = extend_locks(repo, now=after)
    assert skipped.skipped and skipped.extended == 0
    # a backup a generation later reuses every extended pack instead of writing it again
    third = backup_files(
        Repository.open(counting, PASSWORD),
        [source],
        hostname="h",
        retain_until=after + timedelta(days=R),
        wall_clock=clock,
    )
    assert third.stats["bytes_new"] < PARENTS


def test_prune_runs_again_when_its_markers_are_locked_by_default(
    clock: SetClock, counting: CountingStore, source: Path
) -> None:
    """Under a default retention prune's own maintenance lock is locked too: it is hidden (a delete
    marker) rather than refused, so the next prune takes it again."""
    repo = _repo(counting)
    now = clock.now
    backup_files(repo, [source], hostname="h", retain_until=now + timedelta(days=R), wall_clock=clock)
    # packs no restore point uses
    with BlobWriter(repo, retain_until=now + timedelta(days=R), wall_clock=clock) as orphan:
        orphan.save(DATA, b"orphan" * 100_000)
    results = []
    for when in (now, now + timedelta(hours=2)):
        clock.now = when
        results.append(prune(Repository.open(counting, PASSWORD), now=when))
    assert [r.packs_deleted for r in results] == [0, 0]  # the orphan's lock keeps it (prune does not mark it)
    assert list(counting.list("locks/maintenance")) == []
    assert check(Repository.open(counting, PASSWORD), read_data=True).ok


def test_per_object_locked_repository_moves_to_generations(
    clock: SetClock, counting: CountingStore, source: Path
) -> None:
    """An existing repository (packs locked one by one, index version 2) keeps working: the server
    reads each old pack's lock once, then the generation rule applies."""
    repo = _repo(counting, generations=False)
    now = clock.now
    backup_files(repo, [source], hostname="h", retain_until=now + timedelta(days=3), wall_clock=clock)
    old = sorted(i.key for i in counting.list("data/"))
    counting.reset()
    # A file written in between puts a new pack beside the reused ones, as the trees of the source's
    # parent folders do whenever /tmp's mtime moves: the counts below hold either way.
    (source / "between.txt").write_bytes(b"written between the backups")
    backup_files(repo, [source], hostname="h", retain_until=now + timedelta(days=4), wall_clock=clock)
    assert counting.pack_heads == len(old) and counting.retention_puts == len(old)  # before: per backup
    packs = sorted(i.key for i in counting.list("data/"))
    assert len(packs) > len(old)
    enable_generations(repo, retention_days=R, generation_days=G)
    counting.reset()
    first = extend_locks(Repository.open(counting, PASSWORD), now=now)  # the server's first generation
    assert first.read_once == len(packs) == counting.pack_heads == first.extended  # each lock read once
    counting.reset()
    moved = backup_files(
        Repository.open(counting, PASSWORD),
        [source],
        hostname="h",
        retain_until=now + timedelta(days=R),
        wall_clock=clock,
    )
    assert moved.stats["bytes_new"] < PARENTS  # the old packs, now recorded in the horizon, are reused
    assert (counting.pack_heads, counting.retention_puts, counting.explicit_locks) == (0, 0, 0)
    counting.reset()
    clock.now = now + timedelta(days=G)
    second = extend_locks(Repository.open(counting, PASSWORD), now=clock.now)
    used = sum(1 for _ in counting.list("data/"))  # with the moved backup's parent trees, if any
    assert second.read_once == 0 and counting.pack_heads == 0 and second.extended == used


def test_index_files_carry_pack_write_times(repo: Repository) -> None:
    entries = [BlobEntry(DATA, bytes([i]) * 32, i * 10, 10, 10) for i in range(3)]
    v3 = encode_index_file(repo.crypter, {"p1": entries, "p2": entries[:1]}, {"p1": 1_700_000_000})
    written: dict[str, int] = {}
    assert [p for p, _ in read_index_file(repo.crypter, "k", v3, written)] == ["p1", "p2"]
    assert written == {"p1": 1_700_000_000}
    assert decode_index_file(repo.crypter, "k", v3) == {"p1": entries, "p2": entries[:1]}
    v2 = encode_index_file(repo.crypter, {"p1": entries}, {})  # no times: version 2 as before
    assert repo.crypter.decode(v2, b"cloudkeep-index-v1", "k").startswith(b"CKIDX2\n")
    index = Index()
    index.add_rows("old", [(0, entries[0].id, 0, 10, 10)], 1_600_000_000)
    index.add_rows("new", [(0, entries[0].id, 0, 10, 10)], 1_700_000_000)
    index.add_rows("older", [(0, entries[0].id, 0, 10, 10)], 1_500_000_000)
    assert index.get(entries[0].id).pack_id == "new"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "doc",
    [
        b"not json",
        b'{"retention_days": 30}',
        b'{"retention_days": true, "generation_days": 7}',
        b'{"retention_days": 30, "generation_days": 0}',
        b'{"retention_days": 30, "generation_days": 7, "packs": [1]}',
        b'{"retention_days": 30, "generation_days": 7, "extended_until": "2026-01-01T00:00:00"}',
    ],
)
def test_hostile_horizon_is_a_typed_error(counting: CountingStore, doc: bytes) -> None:
    repo = _repo(counting)
    counting.put(HORIZON_KEY, repo.crypter.encode(doc, b"cloudkeep-lock-horizon-v1"))
    with pytest.raises(IntegrityError, match="locks/horizon: malformed"):
        read_horizon(repo)


def test_horizon_round_trip_and_pack_lock(counting: CountingStore) -> None:
    repo = _repo(counting)
    at = datetime(2026, 12, 1, tzinfo=UTC)
    horizon = LockHorizon(R, G, at, at + timedelta(days=R + G), frozenset({"p1"}))
    write_horizon(repo, horizon)
    assert read_horizon(repo) == horizon
    assert horizon.lock_of("p1", None) == at + timedelta(days=R + G)
    assert horizon.lock_of("p2", None) is None  # unknown: a writer stores the chunk again


def test_password_change_hides_the_locked_old_key(counting: CountingStore) -> None:
    repo = _repo(counting)
    repo.change_password(PASSWORD, "a new password", kdf=FAST_KDF)
    assert Repository.open(counting, "a new password").id == repo.id
    with pytest.raises(CloudkeepError):
        Repository.open(counting, PASSWORD)


def test_format_3_writer_records_pack_write_times_and_reads_the_horizon(
    clock: SetClock, counting: CountingStore, source: Path
) -> None:
    server = Repository.create(
        counting, PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=512 * 1024, version=3
    )
    enable_generations(server, retention_days=R, generation_days=G)
    machine = Repository.open_writer(counting, server.writer_bundle(), writer_prefix="writers/m/")
    assert read_horizon(machine) == read_horizon(server)  # a machine holds no repository key
    now = clock.now
    counting.reset()
    backup_files(machine, [source], hostname="m", retain_until=now + timedelta(days=R), wall_clock=clock)
    assert counting.explicit_locks == 0  # the store's default retention locks it all
    fresh = Repository.open(counting, PASSWORD)
    assert fresh.index.written and set(fresh.index.written) == set(fresh.index.packs)
    assert set(fresh.index.written.values()) == {int(now.timestamp())}  # stamped by its clock


def test_migration_keeps_pack_write_times_and_the_horizon(
    clock: SetClock, counting: CountingStore, source: Path
) -> None:
    repo = _repo(counting)
    now = clock.now
    backup_files(repo, [source], hostname="h", retain_until=now + timedelta(days=R), wall_clock=clock)
    before, horizon = dict(Repository.open(counting, PASSWORD).index.written), read_horizon(repo)
    assert before and horizon is not None
    assert migrate_to_confidential(repo)
    after = Repository.open(counting, PASSWORD)
    assert after.config.version == 3 and after.index.written == before
    assert vouch_new_packs(after).vouched  # machines reuse vouched packs: their write times go along
    machine = Repository.open_writer(counting, after.writer_bundle(), writer_prefix="writers/m/")
    assert read_horizon(machine) == horizon  # re-sealed under the shared key
    assert machine.index.written == before
    second = backup_files(
        machine, [source], hostname="m", retain_until=now + timedelta(days=R), wall_clock=clock
    )
    assert second.stats["bytes_new"] < PARENTS  # the migrated packs' write times still cover it
