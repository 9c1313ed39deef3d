"""The storage conformance suite: every backend must behave the same through ``ObjectStore``."""

from __future__ import annotations

import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from cloudkeep.storage import ObjectExistsError, ObjectLockedError, ObjectNotFoundError, ObjectStore
from cloudkeep.storage.base import STAGING_PREFIX


def test_put_get_roundtrip(store: ObjectStore, random_key: str) -> None:
    store.put(random_key, b"hello world")
    assert store.get(random_key) == b"hello world"
    info = store.stat(random_key)
    assert info is not None and info.size == 11 and info.key == random_key


def test_overwrite_replaces(store: ObjectStore, random_key: str) -> None:
    store.put(random_key, b"one")
    store.put(random_key, b"two!")
    assert store.get(random_key) == b"two!"


def test_empty_object(store: ObjectStore, random_key: str) -> None:
    store.put(random_key, b"")
    assert store.get(random_key) == b""
    assert store.stat(random_key).size == 0  # type: ignore[union-attr]


def test_get_missing_raises(store: ObjectStore, random_key: str) -> None:
    with pytest.raises(ObjectNotFoundError):
        store.get(random_key)
    with pytest.raises(ObjectNotFoundError):
        store.get_range(random_key, 0, 4)
    assert store.stat(random_key) is None
    assert not store.exists(random_key)


def test_get_range(store: ObjectStore, random_key: str) -> None:
    data = bytes(range(256)) * 4
    store.put(random_key, data)
    assert store.get_range(random_key, 0, 10) == data[:10]
    assert store.get_range(random_key, 1000, 100) == data[1000:]  # clipped at the end
    assert store.get_range(random_key, 300, 0) == b""


def test_large_object_multipart(store: ObjectStore, random_key: str) -> None:
    """Bigger than each backend's single-put threshold in the fixture: exercises multipart/blocks."""
    data = os.urandom(11 * 2**20 + 123)
    store.put(random_key, data)
    assert store.stat(random_key).size == len(data)  # type: ignore[union-attr]
    assert store.get(random_key) == data
    assert store.get_range(random_key, 6 * 2**20 - 5, 10) == data[6 * 2**20 - 5 : 6 * 2**20 + 5]


def test_if_absent(store: ObjectStore, random_key: str) -> None:
    store.put(random_key, b"first", if_absent=True)
    with pytest.raises(ObjectExistsError):
        store.put(random_key, b"second", if_absent=True)
    assert store.get(random_key) == b"first"


def test_if_absent_large(store: ObjectStore, random_key: str) -> None:
    store.put(random_key, b"x")
    with pytest.raises(ObjectExistsError):
        store.put(random_key, os.urandom(7 * 2**20), if_absent=True)
    assert store.get(random_key) == b"x"


def test_if_absent_race_has_one_winner(store: ObjectStore, random_key: str) -> None:
    winners: list[int] = []
    losers: list[int] = []

    def attempt(n: int) -> None:
        try:
            store.put(random_key, str(n).encode(), if_absent=True)
            winners.append(n)
        except ObjectExistsError:
            losers.append(n)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 7
    assert store.get(random_key) == str(winners[0]).encode()


def test_list_prefix_and_nesting(store: ObjectStore) -> None:
    keys = ["data/ab/1", "data/ab/2", "data/cd/3", "index/x", "snapshots/y", "datax"]
    for key in keys:
        store.put(key, key.encode())
    assert sorted(i.key for i in store.list()) == sorted(keys)
    assert sorted(i.key for i in store.list("data/")) == ["data/ab/1", "data/ab/2", "data/cd/3"]
    assert sorted(i.key for i in store.list("data/a")) == ["data/ab/1", "data/ab/2"]
    assert sorted(i.key for i in store.list("data")) == ["data/ab/1", "data/ab/2", "data/cd/3", "datax"]
    assert list(store.list("nothing/")) == []
    sizes = {i.key: i.size for i in store.list("index/")}
    assert sizes == {"index/x": 7}


def test_list_paginates(store: ObjectStore) -> None:
    count = (store.list_page_size or 1000) + 5  # past one page (S3: 1000 keys unless told otherwise)
    with ThreadPoolExecutor(8) as pool:  # the writes wait on the peer: overlap them (the list is the test)
        list(pool.map(lambda n: store.put(f"many/{n:05d}", b""), range(count)))
    assert len(list(store.list("many/"))) == count


def test_delete(store: ObjectStore, random_key: str) -> None:
    store.put(random_key, b"x")
    store.delete(random_key)
    assert store.stat(random_key) is None
    store.delete(random_key)  # missing: ignored
    assert [i for i in store.list(random_key)] == []


def test_retention_blocks_delete(store: ObjectStore, random_key: str) -> None:
    if not store.supports_object_lock:  # by contract retain_until is accepted and ignored there
        store.put(random_key, b"unlocked", retain_until=datetime.now(UTC) + timedelta(days=1))
        store.delete(random_key)
        assert store.stat(random_key) is None
        return
    until = datetime.now(UTC) + timedelta(days=1)
    store.put(random_key, b"locked", retain_until=until)
    info = store.stat(random_key)
    assert info is not None and info.retain_until is not None
    assert abs((info.retain_until - until).total_seconds()) < 2
    with pytest.raises(ObjectLockedError):
        store.delete(random_key)
    assert store.get(random_key) == b"locked"


def test_expired_retention_allows_delete(store: ObjectStore, random_key: str) -> None:
    if not store.supports_object_lock:
        store.put(random_key, b"soon", retain_until=datetime.now(UTC) + timedelta(seconds=1))
        assert store.stat(random_key).retain_until is None  # type: ignore[union-attr]
        return
    store.put(random_key, b"soon", retain_until=datetime.now(UTC) + timedelta(seconds=1))
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    while True:
        try:
            store.delete(random_key)
            break
        except ObjectLockedError:
            assert datetime.now(UTC) < deadline, "retention never expired"
            threading.Event().wait(0.2)
    assert store.stat(random_key) is None


def test_describe_names_location(store: ObjectStore) -> None:
    assert store.describe().startswith(f"{store.scheme}://")


def _staged(store: ObjectStore, data: bytes) -> str:
    """A staging file where a writer would put it (the store's staging folder, or a private temp)."""
    from cloudkeep.repo.pack import private_staging_dir

    fd, path = tempfile.mkstemp(
        prefix=STAGING_PREFIX + "pack-", dir=store.staging_dir or private_staging_dir()
    )
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


@pytest.mark.parametrize("size", [0, 5000, 11 * 2**20 + 123])  # the last one above every multipart threshold
def test_put_file_stores_and_consumes_the_staging_file(
    store: ObjectStore, random_key: str, size: int
) -> None:
    data = os.urandom(size)
    path = _staged(store, data)
    assert [i.key for i in store.list("")] == [], "a staging file must never be listed as an object"
    store.put_file(random_key, path)
    assert not os.path.exists(path), "put_file consumes the staging file"
    assert store.get(random_key) == data
    assert [i.key for i in store.list("")] == [random_key]


@pytest.mark.parametrize("size", [5000, 11 * 2**20 + 123])  # one PUT; a multipart upload's completion
def test_put_file_if_absent_never_replaces(store: ObjectStore, random_key: str, size: int) -> None:
    """Agents write packs create-only: their S3 session policy denies any other PUT."""
    first = os.urandom(size)
    store.put_file(random_key, _staged(store, first), if_absent=True)
    with pytest.raises(ObjectExistsError):
        store.put_file(random_key, _staged(store, os.urandom(size)), if_absent=True)
    assert store.get(random_key) == first


def test_put_file_under_retention(store: ObjectStore, random_key: str) -> None:
    until = datetime.now(UTC) + timedelta(days=1)
    store.put_file(random_key, _staged(store, b"locked pack"), retain_until=until)
    assert store.get(random_key) == b"locked pack"
    if store.supports_object_lock:
        with pytest.raises(ObjectLockedError):
            store.delete(random_key)


def test_open_range_streams_the_range(store: ObjectStore, random_key: str) -> None:
    data = os.urandom(3 * 2**20 + 5)
    store.put(random_key, data)
    buffer = memoryview(bytearray(100_000))
    with store.open_range(random_key, 1000, 2 * 2**20) as stream:
        got = bytearray()
        while n := stream.readinto(buffer):
            got += buffer[:n]
    assert bytes(got) == data[1000 : 1000 + 2 * 2**20]
    with store.open_range(random_key, len(data) - 10, 4096) as stream:  # clipped at the end
        assert stream.readinto(buffer) == 10 and bytes(buffer[:10]) == data[-10:]
        assert stream.readinto(buffer) == 0
    with store.open_range(random_key, len(data) + 10, 4096) as stream:  # past the end: empty
        assert stream.readinto(buffer) == 0
    with pytest.raises(ObjectNotFoundError), store.open_range(random_key + "-missing", 0, 10):
        pass


def test_store_checks_hold(store: ObjectStore) -> None:
    """What `cloudkeep repository verify` certifies holds on every backend (pagination is covered
    above at full size), and the checks leave nothing behind."""
    from cloudkeep.storage.conformance import CHECKS, scratch_prefix

    for name, check in CHECKS.items():
        if name != "listing pagination":
            result = check(store, scratch_prefix())
            assert result.ok, result
    for result in store.compatibility_checks(scratch_prefix()):
        assert result.ok, result
    assert list(store.list("")) == []
