"""Certify a store before trusting it: the guarantees cloudkeep relies on, checked on the store.

``cloudkeep repository verify`` runs these against a user's endpoint and ``repository add``
runs the create-only check; the test suite holds every backend to the same behaviour. Each
check writes only under a fresh ``ck-verify/<random>/`` prefix and removes what it wrote.
A result says what works and, for a gap, what cloudkeep does about it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cloudkeep.errors import CloudkeepError, ConfigurationError
from cloudkeep.storage.base import ObjectExistsError, ObjectStore

VERIFY_PREFIX = "ck-verify/"


@dataclass(frozen=True)
class StoreCheck:
    """One guarantee: ``ok``, what was seen (``detail``) and what cloudkeep does about a gap."""

    name: str
    ok: bool
    detail: str
    action: str = ""


def scratch_prefix() -> str:
    return f"{VERIFY_PREFIX}{secrets.token_hex(6)}/"


@contextlib.contextmanager
def _cleanup(store: ObjectStore, prefix: str) -> Iterator[None]:
    try:
        yield
    finally:
        with contextlib.suppress(CloudkeepError):
            keys = [info.key for info in store.list(prefix)]
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(store.delete, keys))


def check_create_only(store: ObjectStore, prefix: str) -> StoreCheck:
    """A second create-only write of one key must lose and leave the first value."""
    key = prefix + "create-only"
    with _cleanup(store, prefix):
        store.put(key, b"first", if_absent=True)
        try:
            store.put(key, b"second", if_absent=True)
        except ObjectExistsError:
            if store.get(key) == b"first":
                return StoreCheck("create-only writes", True, "If-None-Match: * is enforced")
        return StoreCheck(
            "create-only writes",
            False,
            "a second create-only write replaced the first (If-None-Match is ignored)",
            "cloudkeep refuses to add a repository here: two writers could both create one",
        )


def require_create_only(store: ObjectStore) -> None:
    """Refuse a store that does not enforce create-only writes (what ``repository add`` relies on)."""
    result = check_create_only(store, scratch_prefix())
    if not result.ok:
        raise ConfigurationError(
            f"{store.describe()} does not enforce create-only writes: {result.detail}",
            hint="cloudkeep needs conditional writes (If-None-Match: *) to keep two writers from "
            "overwriting each other; use a store or version that supports them "
            "(`cloudkeep repository verify` lists what a store supports)",
        )


def check_ranged_reads(store: ObjectStore, prefix: str) -> StoreCheck:
    key = prefix + "ranges"
    data = os.urandom(4096)
    with _cleanup(store, prefix):
        store.put(key, data)
        inner = store.get_range(key, 100, 200) == data[100:300]
        clipped = store.get_range(key, 4000, 500) == data[4000:]
    ok = inner and clipped
    detail = "ranges and clipping at the end are right" if ok else "ranged GETs returned the wrong bytes"
    return StoreCheck("ranged reads", ok, detail, "" if ok else "restore cannot work on this store")


def check_pagination(store: ObjectStore, prefix: str) -> StoreCheck:
    """More keys than one listing page (S3 pages hold 1000 unless the store is told otherwise)."""
    count = (store.list_page_size or 1000) + 5
    keys = [f"{prefix}page/{n:05d}" for n in range(count)]
    with _cleanup(store, prefix), ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: store.put(key, b""), keys))
        seen = sorted(info.key for info in store.list(prefix + "page/"))
    ok = seen == keys
    detail = f"listed {len(seen)} of {count} keys"
    return StoreCheck("listing pagination", ok, detail, "" if ok else "backups and prune would miss objects")


def check_deep_delimiter(store: ObjectStore, prefix: str) -> StoreCheck:
    """Delimiter listings of keys several levels deep (writers' namespaces, pack folders)."""
    deep = ["writers/a/data/0f/" + "x" * 64, "writers/b/snapshots/s", "writers/c/d/e/f/g/h"]
    with _cleanup(store, prefix):
        for key in deep:
            store.put(prefix + key, b"")
        folders = store.list_folders(prefix + "writers/")
        found = sorted(info.key[len(prefix) :] for info in store.list(prefix + "writers/"))
    want = tuple(f"{prefix}writers/{w}/" for w in "abc")
    ok = folders == want and found == sorted(deep)
    detail = "folders and deep keys listed exactly" if ok else f"got folders {folders}"
    return StoreCheck("delimiter listings", ok, detail, "" if ok else "cloudkeep cannot find writers' data")


CHECKS: dict[str, Callable[[ObjectStore, str], StoreCheck]] = {
    "create-only writes": check_create_only,
    "ranged reads": check_ranged_reads,
    "listing pagination": check_pagination,
    "delimiter listings": check_deep_delimiter,
}


def run_checks(store: ObjectStore) -> list[StoreCheck]:
    """Every generic check, then the backend's own (multipart, lock calls, checksum framing)."""
    results = []
    for name, check in CHECKS.items():
        try:
            results.append(check(store, scratch_prefix()))
        except CloudkeepError as exc:
            results.append(StoreCheck(name, False, str(exc), "cloudkeep cannot rely on this store"))
    results.extend(store.compatibility_checks(scratch_prefix()))
    return results
