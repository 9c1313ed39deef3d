"""Index files already downloaded, kept on the machine so the next backup need not fetch them again.

Every backup opens the repository and loads every index file; on a cloud store that was one GET
per file per run. A remote store's listing gives each object's ETag (S3: the MD5 of a single-part
upload; Azure: a version token that changes with every write), so an entry is stored under a name
derived from the key *and* its ETag: a replaced object is simply a miss.

The cache is not trusted. A hit must have the listed size, and the listed MD5 where the ETag is
one; the caller then authenticates and decrypts the cached bytes exactly as downloaded ones, and
calls ``discard`` and downloads when that fails. Entries are written under a temporary name and
renamed into place, so a writer killed mid-write leaves only a temporary file (swept by the next
``retain``), never a partial entry under a real name; a power cut may leave a short file, which
the size check refuses. Nothing is fsynced for the same reason: a lost entry costs one download.

The local-folder store lists no ETag: its files are read as fast as a cache's, so nothing is kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterable
from pathlib import Path

from cloudkeep.repo.steps import step
from cloudkeep.storage.base import ObjectInfo

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 512 * 2**20
_TEMP_PREFIX = ".tmp-"
_MD5_ETAG = re.compile(r"[0-9a-f]{32}")


def _etag(info: ObjectInfo) -> str:
    return (info.etag or "").strip('"').lower()


class IndexCache:
    """One folder of cached objects (one repository, one kind of object), bounded in bytes."""

    def __init__(self, folder: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.hits = self.misses = 0
        self._bytes = 0  # held by entries, as of the last ``retain`` plus what ``put`` added since
        self._lock = threading.Lock()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.usable = True
        except OSError as exc:  # a read-only or full disk costs downloads, never the backup
            log.warning("index cache %s unusable (%s): index files will be downloaded", folder, exc)
            self.usable = False

    def _path(self, info: ObjectInfo) -> Path | None:
        etag = _etag(info)
        if not etag or not self.usable:
            return None
        name = hashlib.sha256(f"{info.key}\0{etag}".encode()).hexdigest()[:40]
        return self.folder / name

    def get(self, info: ObjectInfo) -> bytes | None:
        """The cached bytes of the listed object, if held and of its listed size (and MD5)."""
        path = self._path(info)
        data = None
        if path is not None:
            try:
                data = path.read_bytes()
            except OSError:
                data = None
            if data is not None and not _matches(info, data):
                self._unlink(path)
                data = None
        with self._lock:
            if data is None:
                self.misses += 1
            else:
                self.hits += 1
        return data

    def put(self, info: ObjectInfo, data: bytes) -> None:
        """Keep ``data`` (already authenticated by the caller) for the listed object; best effort."""
        path = self._path(info)
        if path is None or not _matches(info, data):
            return  # not the object listed (replaced since): the next listing names the new one
        with self._lock:
            if self._bytes + len(data) > self.max_bytes:
                return
            self._bytes += len(data)
        temp = self.folder / f"{_TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            temp.write_bytes(data)
            step("index-cache:temp-written")
            os.replace(temp, path)
        except OSError as exc:
            log.debug("index cache: not keeping %s (%s)", info.key, exc)
            self._unlink(temp)

    def remember(self, key: str, data: bytes) -> None:
        """Keep an index file this machine just wrote, under its MD5: what S3 lists as the ETag of
        a single-part upload, so the next run needs no download (where the store lists another
        ETag, Azure's, the entry is never asked for and the next ``retain`` drops it)."""
        self.put(ObjectInfo(key, len(data), etag=hashlib.md5(data, usedforsecurity=False).hexdigest()), data)

    def discard(self, info: ObjectInfo) -> None:
        """Forget an entry whose bytes did not authenticate (tampered with, or damaged on disk)."""
        path = self._path(info)
        if path is not None:
            self._unlink(path)

    def retain(self, listed: Iterable[ObjectInfo]) -> None:
        """Drop every entry but the listed objects' (deleted or replaced ones), and temporary files."""
        if not self.usable:
            return
        keep = {path.name for info in listed if (path := self._path(info)) is not None}
        held = 0
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    if entry.name in keep:
                        held += entry.stat().st_size
                    else:
                        self._unlink(Path(entry.path))
        except OSError as exc:
            log.debug("index cache %s: not swept (%s)", self.folder, exc)
        with self._lock:
            self._bytes = held

    @staticmethod
    def _unlink(path: Path) -> None:
        with contextlib.suppress(OSError):  # already gone; a stale entry is refused by its checks
            path.unlink()


def _matches(info: ObjectInfo, data: bytes) -> bool:
    """The listed size, and the listed MD5 where the ETag is one (a single-part S3 upload)."""
    if len(data) != info.size:
        return False
    etag = _etag(info)
    if _MD5_ETAG.fullmatch(etag):
        return hashlib.md5(data, usedforsecurity=False).hexdigest() == etag
    return True
