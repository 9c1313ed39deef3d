"""Loading the index when a repository opens: list every index file, fetch, authenticate, merge.

Every backup opens the repository, so this runs before any file is read: listings go out together
(the root layout, every writer's namespace, prune's markers), index files come from the machine's
index cache (``repo/indexcache.py``) where it holds them and from the store otherwise, and both go
through the same authentication — the cache only saves the download.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from cloudkeep.compat import UTC, zip_strict
from cloudkeep.errors import ConflictError, IntegrityError
from cloudkeep.repo.index import INDEX_PREFIX, Index, RawEntry
from cloudkeep.repo.indexcache import IndexCache
from cloudkeep.repo.layout import PRUNE_PREFIX, WRITERS_PREFIX
from cloudkeep.repo.vouch import read_vouched
from cloudkeep.repo.writermac import mac_problem
from cloudkeep.storage.base import ObjectInfo, ObjectNotFoundError, ObjectStore

if TYPE_CHECKING:
    from cloudkeep.repo.repository import Repository

log = logging.getLogger(__name__)

_Packs = list[tuple[str, Iterable[RawEntry]]]


@dataclass(frozen=True)
class Listing:
    """What loading the index lists first: every index file and prune's markers."""

    index_files: list[ObjectInfo]
    markers: list[ObjectInfo]


def list_everywhere(store: ObjectStore, prefix: str, pool: ThreadPoolExecutor) -> list[ObjectInfo]:
    """Objects under ``prefix`` in the root layout, then in each writer's namespace (listed at once)."""
    root = pool.submit(lambda: list(store.list(prefix)))
    writers = store.list_folders(WRITERS_PREFIX)
    per_writer = list(pool.map(lambda writer: list(store.list(writer + prefix)), writers))
    return root.result() + [info for infos in per_writer for info in infos]


def list_for_load(store: ObjectStore, threads: int = 8) -> Listing:
    """Prune's markers, then the index files (needs no key: open runs it while the password's key
    is derived).

    Markers first: a sweep deletes the index files naming its packs before its marker, so a
    marker not seen here means those files are not listed after it. Listing them the other way
    round relied on the download failing for a file swept meanwhile, which a cache hit skips.
    """
    markers = list(store.list(PRUNE_PREFIX))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return Listing(list_everywhere(store, INDEX_PREFIX, pool), markers)


def load_index(repo: Repository, listing: Listing | None = None) -> None:
    """(Re)load every index file, in parallel; packs marked by prune go to ``repo.doomed``.

    ``listing``: already listed by the caller (``Repository.open``); used for the first attempt.
    """
    for _ in range(5):
        if _load_once(repo, listing or list_for_load(repo.store, repo.io_threads)):
            return
        listing = None
    raise ConflictError(
        "the index kept changing while it was read (index files replaced by prune or repair)",
        hint="try again",
    )


def doomed_packs(repo: Repository, markers: Iterable[ObjectInfo] | None = None) -> set[str]:
    """Packs listed by prune's markers (``markers``: already listed). A damaged marker is skipped
    and recorded: its packs stay usable (prune never deletes on a marker it cannot read), and
    `check` names it."""
    packs: set[str] = set()
    unreadable: dict[str, str] = {}
    for info in repo.store.list(PRUNE_PREFIX) if markers is None else markers:
        try:
            listed = repo.read_marker(info.key)["packs"]
            if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
                raise IntegrityError(f"prune marker {info.key}: malformed pack list")
        except ObjectNotFoundError:
            continue  # swept while listing
        except (IntegrityError, ValueError, KeyError, TypeError) as exc:
            unreadable[info.key] = str(exc)
            continue
        packs.update(listed)
    with repo.lock:
        repo.unreadable_markers = unreadable
    return packs


def refresh_doomed(repo: Repository) -> None:
    """Stop deduplicating against packs marked since the index was loaded.

    A backup calls this after its session marker is visible: a prune marker written before
    then is seen here; one written after it sees the session and waits for it. A marker
    already swept is not seen, but its sweep deleted the index files naming its packs before
    the packs and the marker: if a file loaded earlier is gone, the index is loaded again.
    """
    listing = list_for_load(repo.store, repo.io_threads)  # markers first, as above
    doomed = doomed_packs(repo, listing.markers)
    if not repo.index_files <= {info.key for info in listing.index_files}:
        load_index(repo)
        return
    with repo.lock:
        newly = [p for p in repo.index.packs if p in doomed]
        for pack_id in newly:
            repo.doomed.add_pack(pack_id, repo.index.packs[pack_id])
        if newly:
            repo.index.remove_packs(set(newly))


@dataclass
class _Read:
    """One index file, read: its packs, their write times, and why its writer's MAC fails (if so)."""

    packs: _Packs
    written: dict[str, int]
    problem: str | None


def _read(repo: Repository, key: str, data: bytes) -> _Read:
    written: dict[str, int] = {}
    packs = repo.read_index_file(key, data, written)  # validated whole before use
    return _Read(packs, written, index_file_problem(repo, key, data))


def index_file_problem(repo: Repository, key: str, data: bytes) -> str | None:
    """Why a writer-namespace index file is not authenticated by its writer (where checkable)."""
    if not key.startswith(WRITERS_PREFIX):
        return None
    mac_key = repo.index_mac_key(key[: key.index("/", len(WRITERS_PREFIX)) + 1])
    return mac_problem(mac_key, key, data) if mac_key is not None else None


class _Fetcher:
    """Index files' bytes: from the cache where it holds them, else the store."""

    def __init__(self, store: ObjectStore, cache: IndexCache | None) -> None:
        self.store, self.cache = store, cache

    def download(self, info: ObjectInfo) -> bytes | None:
        try:
            return self.store.get(info.key)
        except ObjectNotFoundError:
            return None

    def __call__(self, info: ObjectInfo) -> tuple[bytes | None, bool]:
        cached = self.cache.get(info) if self.cache is not None else None
        if cached is not None:
            return cached, True
        return self.download(info), False

    def settle(self, repo: Repository, info: ObjectInfo, data: bytes, cached: bool) -> _Read | str | None:
        """Read ``data``; cached bytes that fail are dropped and downloaded. ``None``: the file
        vanished (prune replaced it); a string: why it cannot be read."""
        try:
            read: _Read | str = _read(repo, info.key, data)
        except IntegrityError as exc:
            read = str(exc)
        if cached and (isinstance(read, str) or read.problem is not None):
            # Not what its writer wrote (a tampered or damaged cache file): the store decides.
            assert self.cache is not None
            self.cache.discard(info)
            fresh = self.download(info)
            return None if fresh is None else self.settle(repo, info, fresh, False)
        if not cached and not isinstance(read, str) and read.problem is None and self.cache is not None:
            self.cache.put(info, data)  # only files that authenticated are kept
        return read


def _load_once(repo: Repository, listing: Listing) -> bool:
    """False if a listed index file vanished: prune replaced it after writing its successor,
    which a new listing finds, so the caller lists again rather than miss packs."""
    loaded_at = datetime.now(UTC)
    infos = listing.index_files
    doomed = doomed_packs(repo, listing.markers)

    index, doomed_index, foreign = Index(), Index(), Index()
    unreadable: dict[str, str] = {}
    unauthenticated: dict[str, str] = {}
    # Unauthenticated files are added last: a pack listed twice keeps the first listing's rows,
    # so a forged listing of a genuine pack never replaces its writer's own.
    later: list[tuple[_Packs, dict[str, int], bool]] = []

    def add(packs: _Packs, written: dict[str, int], trusted: bool) -> None:
        for pack_id, rows in packs:
            target = doomed_index if pack_id in doomed else index if trusted else foreign
            target.add_rows(pack_id, rows, written.get(pack_id))

    restrict = repo.restricts_dedup
    fetcher = _Fetcher(repo.store, repo.index_cache)
    with ThreadPoolExecutor(max_workers=repo.io_threads + 1) as pool:
        # The server's vouched entries, read meanwhile (filtered by the index files below).
        vouching = (
            pool.submit(read_vouched, repo.store, repo.crypter, repo.vouch_key, repo.id, repo.io_threads)
            if restrict
            else None
        )
        for info, (data, cached) in zip_strict(infos, pool.map(fetcher, infos)):
            if data is None:
                return False
            read = fetcher.settle(repo, info, data, cached)
            if read is None:
                return False
            key = info.key
            if isinstance(read, str):
                # Its packs are simply unknown: a backup stores their blobs again, a restore that
                # needs them says so, and `check` reports the file; `repair index` recovers them.
                unreadable[key] = read
                continue
            if read.problem is not None:  # another machine's forgery, or a file from before writer keys
                unauthenticated[key] = read.problem
                if restrict and key not in repo.unauthenticated_index_files:  # once per file
                    log.warning("not deduplicating against %s", read.problem)
            trusted = not restrict or (key.startswith(repo.writer_prefix) and read.problem is None)
            if read.problem is None:
                add(read.packs, read.written, trusted)
            else:
                later.append((read.packs, read.written, trusted))
    for packs, written, trusted in later:
        add(packs, written, trusted)
    unverified: dict[str, str] = {}
    if vouching is not None:  # the server's vouched entries, exactly as it verified them
        vouched, unverified = vouching.result()
        for pack_id, rows, when in vouched:
            # Only packs an index file still lists: index files say what is live (prune removes
            # a pack's entries before the pack), vouched files are never rewritten.
            if pack_id not in doomed and (pack_id in foreign.packs or pack_id in index.packs):
                index.add_rows(pack_id, rows, when)
    if repo.index_cache is not None:
        repo.index_cache.retain(infos)
    with repo.lock:
        repo.index, repo.doomed, repo.foreign = index, doomed_index, foreign
        repo.index_files = {info.key for info in infos}
        repo.unverified_vouches = unverified
        repo.unauthenticated_index_files = unauthenticated
        repo.unreadable_index_files = unreadable
        repo.index_loaded_at = loaded_at
    return True
