"""Pack objects: many encrypted blobs in one storage object, so object count and request cost stay low.

Layout of ``data/<id[:2]>/<id>``::

    blob_1 || blob_2 || … || sealed header || u32 little-endian header length

Each blob is ``nonce || AES-GCM(codec byte || payload)`` with the blob's type and id as associated
data. The sealed header lists every blob (type, id, offset, length, raw length) so the index can
be rebuilt from the packs alone. The pack id is the unkeyed BLAKE3 hash of the whole object, so a
damaged pack is detected without the key.
"""

from __future__ import annotations

import binascii
import contextlib
import errno
import hashlib
import json
import os
import stat
import struct
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple, cast

import blake3

from cloudkeep.errors import InsufficientSpaceError, IntegrityError, PermissionDeniedError
from cloudkeep.repo.crypto import Crypter
from cloudkeep.storage.base import STAGING_PREFIX

DATA = "data"
TREE = "tree"
BLOB_TYPES = (DATA, TREE)
_HEADER_AAD = b"cloudkeep-pack-header-v1"
STAGING_PACK_PREFIX = STAGING_PREFIX + "pack-"
# Small sealed blobs are gathered into a buffer of this size and written (and hashed) together: a
# tree of small files otherwise costs one write syscall and one hash call per blob. Larger blobs
# go out directly, without a copy.
WRITE_BATCH = 256 * 1024


class BlobEntry(NamedTuple):
    """Where one blob lives inside its pack. A named tuple, not a frozen dataclass: the index makes
    one per look-up (a restore's plan, one per chunk), 0.24 µs against the dataclass's 0.59, and
    a backup worker pickles every entry of its packs to the parent."""

    type: str
    id: bytes
    offset: int
    length: int
    raw_length: int


def blob_aad(blob_type: str, blob_id: bytes) -> bytes:
    return b"cloudkeep-blob-v1:" + blob_type.encode() + b":" + blob_id


def open_blob(
    crypter: Crypter, entry: BlobEntry, pack_id: str, sealed: bytes | memoryview, *, reuse_buffer: bool
) -> bytes | memoryview:
    """Decrypt, decompress and verify one blob of a pack against its content id (``crypter``: the
    pack's). ``reuse_buffer``: the result may live in this thread's reusable buffer
    (``Crypter.decode_into_buffer``). Shared by the repository and restore's worker process."""
    what = _named_whole(entry, pack_id, sealed)
    aad = blob_aad(entry.type, entry.id)
    if reuse_buffer:
        data: bytes | memoryview = crypter.decode_into_buffer(sealed, aad, what)
    else:
        data = crypter.decode(sealed, aad, what)
    if crypter.content_id(data) != entry.id:
        raise IntegrityError(f"{what}: content does not match its id")
    return data


def _blob_name(entry: BlobEntry, pack_id: str) -> str:
    """How errors name the blob."""
    return f"{entry.type} blob {entry.id.hex()} in pack {pack_id}"


def _named_whole(entry: BlobEntry, pack_id: str, sealed: bytes | memoryview) -> str:
    """``_blob_name``; ``IntegrityError`` when its pack held less of it than the index says."""
    what = _blob_name(entry, pack_id)
    if len(sealed) != entry.length:
        raise IntegrityError(f"{what}: truncated pack (got {len(sealed)} of {entry.length} bytes)")
    return what


class SealedBlob:
    """A blob as its pack holds it, opened whole (``open_blob``) or in pieces, never whole, as often
    as asked: a large tree's listing is read twice (``tree.iter_tree_blob``), a small one whole (a
    reading in pieces costs a small tree ~40 µs more: 0.2 s over the node tree's 5,000 folders).
    ``sealed`` must not change between readings (bytes, or a view of bytes)."""

    def __init__(self, crypter: Crypter, entry: BlobEntry, pack_id: str, sealed: bytes | memoryview) -> None:
        _named_whole(entry, pack_id, sealed)
        self.crypter, self.entry, self.pack_id, self.sealed = crypter, entry, pack_id, sealed
        self.size = entry.raw_length  # (from the index: it only chooses how the blob is read)
        self._checked = False  # a reading to the end checked the id: the same sealed bytes give the same

    def whole(self) -> bytes:
        opened = open_blob(self.crypter, self.entry, self.pack_id, self.sealed, reuse_buffer=False)
        return cast(bytes, opened)  # (a buffer's view only with ``reuse_buffer``)

    def pieces(self, size: int) -> Iterator[bytes | memoryview]:
        """The blob decrypted and decompressed anew, in pieces of about ``size`` bytes; after the
        last, ``IntegrityError`` if it did not open or (until a reading has) match its id."""
        what = _blob_name(self.entry, self.pack_id)  # (named only when read in pieces; checked whole at init)
        aad = blob_aad(self.entry.type, self.entry.id)
        hasher = None if self._checked else self.crypter.id_hasher()
        for piece in self.crypter.opened_pieces(self.sealed, aad, what, size):
            if hasher is not None:
                hasher.update(piece)
            yield piece
        if hasher is not None and hasher.digest() != self.entry.id:
            raise IntegrityError(f"{what}: content does not match its id")
        self._checked = True


def pack_key(pack_id: str) -> str:
    """``data/<xx>/<id>``; a writer's pack id ``writers/<m>/<id>`` maps to ``writers/<m>/data/<xx>/<id>``."""
    writer, _, digest = pack_id.rpartition("/")
    return f"{writer}/data/{digest[:2]}/{digest}" if writer else f"data/{digest[:2]}/{digest}"


def pack_id_from_key(key: str) -> str:
    """The inverse of ``pack_key``: the pack id (with its writer prefix, if any) a data key holds."""
    head, _, digest = key.rpartition("/")
    writer = head.rsplit("/data/", 1)[0] if "/data/" in head else ""
    return f"{writer}/{digest}" if writer else digest


class PackWriter:
    """Appends sealed blobs to a staging file until the pack reaches its target size.

    Packs are staged on disk, not in memory (as restic does): RAM stays flat whatever the pack
    size, and a local repository renames the finished file into place without another copy. The
    pack id is hashed as the bytes go out, so finishing never reads the pack back; so is its MD5
    when the store checks uploads by it (``ObjectStore.upload_md5``), for the same reason. Small blobs are
    batched (``WRITE_BATCH``) before they go out. Not thread-safe: the writer serialises ``add``
    per pack.
    """

    def __init__(
        self,
        blob_type: str,
        staging_dir: str | None,
        *,
        crypter: Crypter | None = None,
        prelude: bytes = b"",
        tag: str = "",
        md5: bool = False,
    ) -> None:
        self.blob_type = blob_type
        self.crypter = crypter  # seals this pack's header (format 3: its own data key)
        self.entries: list[BlobEntry] = []
        self.size = 0
        self._hasher = blake3.blake3()
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 else None
        self._batch = bytearray(WRITE_BATCH)
        self._batched = 0  # bytes of ``_batch`` not yet written
        staging_dir = staging_dir or private_staging_dir()
        try:
            # ``tag``: a worker process's packs, which its parent removes if it dies (procpool.py)
            self._fd, self.path = tempfile.mkstemp(prefix=STAGING_PACK_PREFIX + tag, dir=staging_dir)
        except OSError as exc:
            raise _staging_error(exc, staging_dir) from exc
        if prelude:  # format 3: the wrapped data key, ahead of the blobs so one small read finds it
            try:
                self._write(prelude)
            except BaseException:
                self.discard()
                raise
            self.size = len(prelude)

    def add(self, blob_id: bytes, sealed: bytes | memoryview, raw_length: int) -> None:
        length = len(sealed)
        if length >= WRITE_BATCH // 2 or self._batched + length > WRITE_BATCH:
            self._flush()  # what is batched goes out first: the pack keeps the order of ``add``
        if length >= WRITE_BATCH // 2:
            self._write(sealed)
        else:
            self._batch[self._batched : self._batched + length] = sealed
            self._batched += length
        self.entries.append(BlobEntry(self.blob_type, blob_id, self.size, len(sealed), raw_length))
        self.size += len(sealed)

    def add_pieces(self, blob_id: bytes, sealed: Iterable[bytes], raw_length: int) -> int:
        """``add`` of a blob sealed a piece at a time (``Crypter.seal_pieces``), each written as it
        comes; returns its length. A failure part way leaves the pack unusable, as in ``add``."""
        self._flush()
        length = 0
        for piece in sealed:
            self._write(piece)
            length += len(piece)
        self.entries.append(BlobEntry(self.blob_type, blob_id, self.size, length, raw_length))
        self.size += length
        return length

    def _flush(self) -> None:
        if self._batched:
            batched, self._batched = self._batched, 0
            self._write(memoryview(self._batch)[:batched])

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise _staging_error(exc, os.path.dirname(self.path)) from exc
        self._hasher.update(data)
        if self._md5 is not None:
            self._md5.update(data)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def md5(self) -> bytes | None:
        """The MD5 digest of the bytes written so far (the whole pack once ``finish``ed), if asked for."""
        return self._md5.digest() if self._md5 is not None else None

    def finish(self, crypter: Crypter | None = None) -> tuple[str, str, list[BlobEntry]]:
        """Append the sealed header; return ``(pack id, staging file path, entries)``.

        The caller now owns the file (``ObjectStore.put_file`` consumes it; ``discard`` otherwise).
        """
        crypter = crypter or self.crypter
        assert crypter is not None
        sealed = crypter.encode(memoryview(header_text(self.entries)), _HEADER_AAD)
        self._flush()
        self._write(sealed + struct.pack("<I", len(sealed)))
        self._close()
        return self._hasher.hexdigest(), self.path, self.entries

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        """Remove the staging file (an aborted backup, an empty pack)."""
        self._close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def header_text(entries: list[BlobEntry]) -> bytearray:
    """The pack header's JSON, the bytes of ``json.dumps`` of ``[[type, id hex, offset, length,
    raw length], ...]``, written into one buffer. ``json.dumps`` held a list of small strings per
    entry before joining them: 4.2 MiB for a pack of small files' blobs (plus 1.8 MiB of rows), the
    largest thing a backup worker held at its peak (bench/README.md, stop 54)."""
    text = bytearray(b"[")
    types: dict[str, bytes] = {}
    for entry in entries:
        kind = types.get(entry.type)
        if kind is None:
            kind = types[entry.type] = json.dumps(entry.type).encode()
        text += b'%s[%s, "%s", %d, %d, %d]' % (
            b", " if len(text) > 1 else b"",
            kind,
            binascii.hexlify(entry.id),
            entry.offset,
            entry.length,
            entry.raw_length,
        )
    text += b"]"
    return text


def private_staging_dir() -> str:
    """``<system temp>/cloudkeep-staging-<uid>``: where packs for remote stores are staged.

    One lasting folder (not one per backup) so the temp folder's own mtime stays put between
    backups; private (0700, ours, not a symlink) so another local user cannot swap a staged pack
    for something else before it is uploaded.
    """
    uid = getattr(os, "getuid", lambda: None)()
    path = os.path.join(tempfile.gettempdir(), "cloudkeep-staging" + (f"-{uid}" if uid is not None else ""))
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise _staging_error(exc, path) from exc
    st = os.lstat(path)
    if uid is not None and (not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077):
        raise PermissionDeniedError(
            f"{path} is not a private folder of this user: packs cannot be staged there safely",
            hint="remove it, or set TMPDIR to a private folder",
        )
    return path


def _staging_error(exc: OSError, where: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientSpaceError(
            f"no space left to stage a pack in {where}",
            hint="free space there (a remote repository stages its packs under TMPDIR: a bigger disk helps)",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDeniedError(f"cannot stage a pack in {where}: {exc.strerror}")
    return exc


def sweep_stale_staging(folder: str | None, older_than_s: float = 86400.0) -> int:
    """Remove packs staged by backups that were killed (a day old: no live pack stays open that long)."""
    folder = folder or private_staging_dir()
    limit = time.time() - older_than_s
    removed = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(STAGING_PACK_PREFIX) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        if entry.stat(follow_symlinks=False).st_mtime < limit:
                            os.unlink(entry.path)
                            removed += 1
    except OSError:
        pass  # best effort: a folder we cannot list holds nothing of ours to sweep
    return removed


def read_header(crypter: Crypter, pack_id: str, tail: bytes, pack_size: int) -> list[BlobEntry]:
    """Parse the header from the pack's tail bytes (which must include the whole header)."""
    what = f"pack {pack_id}"
    if len(tail) < 4:
        raise IntegrityError(f"{what}: truncated (no header)")
    (length,) = struct.unpack("<I", tail[-4:])
    if length + 4 > len(tail) or length + 4 > pack_size:
        raise IntegrityError(f"{what}: truncated or corrupt header (claims {length} bytes)")
    try:
        rows = json.loads(crypter.decode(tail[-4 - length : -4], _HEADER_AAD, f"{what} header"))
        return [BlobEntry(t, bytes.fromhex(i), int(o), int(n), int(r)) for t, i, o, n, r in rows]
    except (ValueError, TypeError) as exc:
        raise IntegrityError(f"{what}: malformed header ({exc})") from None


def pack_id_of(body: bytes) -> str:
    return blake3.blake3(body).hexdigest()
