"""The machine's index cache (repo/indexcache.py) on real stores: S3 on the moto server, Azure on
Azurite. A hit saves the download and nothing else: changed, tampered and deleted objects are
caught, and a writer killed mid-entry leaves nothing that is ever accepted."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from cloudkeep.repo import Repository, backup_files
from cloudkeep.repo.index import INDEX_PREFIX
from cloudkeep.repo.indexcache import IndexCache
from cloudkeep.repo.layout import PRUNE_PREFIX
from cloudkeep.repo.pack import pack_key
from cloudkeep.storage import ObjectInfo, ObjectStore, open_store
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS
from tests.storage.conftest import make_azure_container


def index_gets(store: ObjectStore) -> list[str]:
    """Keys of the index files this S3 store downloads from now on (counted at the client)."""
    fetched: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        if "/index/" in "/" + params["Key"]:
            fetched.append(params["Key"])

    store.client.meta.events.register("before-parameter-build.s3.GetObject", record)  # type: ignore[attr-defined]
    return fetched


def filled(store: ObjectStore, tmp_path: Path) -> tuple[str, list[ObjectInfo]]:
    """A repository with two backups of different data (two index files at least); its id and the
    index files listed."""
    repo = Repository.create(store, PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=2**20)
    for seed in (1, 2):
        folder = tmp_path / f"day{seed}"
        folder.mkdir()
        (folder / "data.bin").write_bytes(random.Random(seed).randbytes(3 * 2**20))
        opened = Repository.open(store, PASSWORD, cache_dir=tmp_path / "writer-cache")
        backup_files(opened, [folder], hostname="h", cache_dir=tmp_path / "files")
    infos = sorted(store.list(INDEX_PREFIX), key=lambda info: info.key)
    assert len(infos) >= 2
    return repo.id, infos


def packs(repo: Repository) -> set[str]:
    return set(repo.index.packs)


def cache_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_hit_reuses_without_a_download(s3_store: ObjectStore, tmp_path: Path) -> None:
    repo_id, infos = filled(s3_store, tmp_path)
    reference = packs(Repository.open(s3_store, PASSWORD))

    # The backups cached what they wrote: the next open downloads no index file.
    fetched = index_gets(s3_store)
    repo = Repository.open(s3_store, PASSWORD, cache_dir=tmp_path / "writer-cache")
    assert fetched == []
    assert packs(repo) == reference and repo.unreadable_index_files == {}
    assert repo.index_cache is not None and repo.index_cache.hits == len(infos)

    # A fresh cache downloads each once, then holds them.
    fresh = tmp_path / "fresh"
    assert packs(Repository.open(s3_store, PASSWORD, cache_dir=fresh)) == reference
    assert sorted(fetched) == [s3_store.prefix + info.key for info in infos]  # type: ignore[attr-defined]
    fetched.clear()
    assert packs(Repository.open(s3_store, PASSWORD, cache_dir=fresh)) == reference
    assert fetched == []
    assert len(list((fresh / repo_id / "index").iterdir())) == len(infos)


def test_changed_object_is_downloaded_again(s3_store: ObjectStore, tmp_path: Path) -> None:
    repo_id, infos = filled(s3_store, tmp_path)
    cache = tmp_path / "writer-cache"
    changed, other = infos
    first = packs(Repository.open(s3_store, PASSWORD, cache_dir=cache))
    # Same key, other (valid) content: only the other file's packs may be loaded now.
    s3_store.put(changed.key, s3_store.get(other.key))
    fetched = index_gets(s3_store)
    repo = Repository.open(s3_store, PASSWORD, cache_dir=cache)
    assert fetched == [s3_store.prefix + changed.key]  # type: ignore[attr-defined]
    assert packs(repo) < first
    assert packs(repo) == packs(Repository.open(s3_store, PASSWORD))
    relisted = next(i for i in s3_store.list(INDEX_PREFIX) if i.key == changed.key)
    assert IndexCache(cache / repo_id / "index").get(relisted) == s3_store.get(other.key)


def tamper(folder: Path) -> None:
    """Flip one byte in the middle of every entry (same size: only its content is wrong)."""
    for path in folder.iterdir():
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))


def test_tampered_entry_is_refused_and_replaced_on_s3(s3_store: ObjectStore, tmp_path: Path) -> None:
    repo_id, infos = filled(s3_store, tmp_path)
    folder = tmp_path / "writer-cache" / repo_id / "index"
    reference = packs(Repository.open(s3_store, PASSWORD))
    genuine = cache_files(folder)
    tamper(folder)
    fetched = index_gets(s3_store)
    repo = Repository.open(s3_store, PASSWORD, cache_dir=tmp_path / "writer-cache")
    assert len(fetched) == len(infos)  # every entry refused (its MD5 is not the listed ETag)
    assert packs(repo) == reference and repo.unreadable_index_files == {}
    assert cache_files(folder) == genuine


def test_tampered_entry_fails_authentication_on_azure(azurite: Any, unique_name: str, tmp_path: Path) -> None:
    """Azure's ETag is no MD5: a same-size tampered entry passes the size check, and the
    authentication every index file goes through refuses it; the store's bytes replace it."""
    make_azure_container(azurite, unique_name)
    store = open_store(f"azure://{unique_name}/repo", connection_string=azurite.connection_string)
    repo_id, infos = filled(store, tmp_path)
    cache = tmp_path / "cache"
    reference = packs(Repository.open(store, PASSWORD, cache_dir=cache))
    folder = cache / repo_id / "index"
    genuine = cache_files(folder)
    assert len(genuine) == len(infos)
    tamper(folder)
    repo = Repository.open(store, PASSWORD, cache_dir=cache)
    assert packs(repo) == reference and repo.unreadable_index_files == {}
    assert repo.index_cache is not None and repo.index_cache.hits == len(infos)  # read, then refused
    assert cache_files(folder) == genuine


def test_deleted_index_file_is_dropped(s3_store: ObjectStore, tmp_path: Path) -> None:
    repo_id, infos = filled(s3_store, tmp_path)
    cache = tmp_path / "writer-cache"
    folder = cache / repo_id / "index"
    Repository.open(s3_store, PASSWORD, cache_dir=cache)
    assert IndexCache(folder).get(infos[0]) is not None
    s3_store.delete(infos[0].key)
    Repository.open(s3_store, PASSWORD, cache_dir=cache)
    assert IndexCache(folder).get(infos[0]) is None
    assert len(list(folder.iterdir())) == len(infos) - 1


_KILLED_WRITER = """
import hashlib, os, signal, sys
from pathlib import Path
from cloudkeep.repo.indexcache import IndexCache
from cloudkeep.repo.layout import PRUNE_PREFIX
from cloudkeep.repo.pack import pack_key
from cloudkeep.repo.steps import hooked
from cloudkeep.storage import ObjectInfo

data = bytes(range(256)) * 64
info = ObjectInfo("index/x", len(data), etag=hashlib.md5(data).hexdigest())
with hooked(lambda name: os.kill(os.getpid(), signal.SIGKILL)):
    IndexCache(Path(sys.argv[1])).put(info, data)
"""


def test_kill_during_write_leaves_no_accepted_entry(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    child = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(folder)], capture_output=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    leftovers = os.listdir(folder)
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-")  # written, never renamed
    data = bytes(range(256)) * 64
    info = ObjectInfo("index/x", len(data), etag=hashlib.md5(data).hexdigest())
    cache = IndexCache(folder)
    assert cache.get(info) is None
    cache.retain([info])
    assert os.listdir(folder) == []  # the temporary file is swept
    cache.put(info, data)
    assert cache.get(info) == data


def test_short_or_foreign_entries_are_misses_and_the_size_is_bounded(tmp_path: Path) -> None:
    data = b"index bytes" * 100
    info = ObjectInfo("index/a", len(data), etag='"' + hashlib.md5(data).hexdigest() + '"')
    cache = IndexCache(tmp_path / "c", max_bytes=len(data) + 10)
    cache.put(info, data[:-1])  # not what was listed: not kept
    assert cache.get(info) is None
    cache.put(info, data)
    assert cache.get(info) == data
    other = ObjectInfo("index/b", len(data), etag="opaque-version-token")
    cache.put(other, data)  # over the bound: not kept
    assert cache.get(other) is None
    assert cache.get(ObjectInfo("index/c", len(data))) is None  # no ETag listed: never cached


def test_local_store_keeps_no_cache(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/repo")
    Repository.create(store, PASSWORD, kdf=FAST_KDF)
    repo = Repository.open(store, PASSWORD, cache_dir=tmp_path / "cache")
    assert repo.index_cache is None and not (tmp_path / "cache").exists()


class _SweepBetweenListings:
    """The S3 store, but a prune sweep (index file, its pack, then its marker: prune's order)
    completes right after the first of the two listings that loading the index makes."""

    def __init__(self, inner: ObjectStore, sweep: list[str]) -> None:
        self._inner, self._sweep = inner, sweep

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        found = list(self._inner.list(prefix))
        if prefix in (PRUNE_PREFIX, INDEX_PREFIX) and self._sweep:
            for key in self._sweep:
                self._inner.delete(key)
            self._sweep.clear()
        return iter(found)


def test_a_sweep_during_load_never_resurrects_a_cached_index_file(
    s3_store: ObjectStore, tmp_path: Path
) -> None:
    """Without a download, nothing proves a cached file still exists: the listing order must."""
    _, infos = filled(s3_store, tmp_path)
    cache = tmp_path / "writer-cache"
    repo = Repository.open(s3_store, PASSWORD, cache_dir=cache)
    swept = infos[0]
    pack_id = next(iter(read_packs(repo, swept.key)))
    marker = PRUNE_PREFIX + "f" * 32
    repo.write_marker(marker, {"packs": [pack_id]})
    racing = cast(ObjectStore, _SweepBetweenListings(s3_store, [swept.key, pack_key(pack_id), marker]))
    after = Repository.open(racing, PASSWORD, cache_dir=cache)
    assert pack_id not in after.index.packs  # never deduplicated against: its pack is gone
    assert not s3_store.exists(marker) and not s3_store.exists(pack_key(pack_id))


def read_packs(repo: Repository, key: str) -> set[str]:
    return {pack_id for pack_id, _ in repo.read_index_file(key, repo.store.get(key))}
