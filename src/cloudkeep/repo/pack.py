"""Pack objects: many encrypted blobs in one storage object, so object count and request cost stay low.

Layout of ``data/<id[:2]>/<id>``::

    blob_1 || blob_2 || … || sealed header || u32 little-endian header length

Each blob is ``nonce || AES-GCM(codec byte || payload)`` with the blob's type and id as associated
data. The sealed header lists every blob (type, id, offset, length, raw length) so the index can
be rebuilt from the packs alone. The pack id is the unkeyed BLAKE3 hash of the whole object, so a
damaged pack is detected without the key.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import blake3

from cloudkeep.errors import IntegrityError
from cloudkeep.repo.crypto import Crypter

DATA = "data"
TREE = "tree"
BLOB_TYPES = (DATA, TREE)
_HEADER_AAD = b"cloudkeep-pack-header-v1"


@dataclass(frozen=True, slots=True)
class BlobEntry:
    """Where one blob lives inside its pack."""

    type: str
    id: bytes
    offset: int
    length: int
    raw_length: int


def blob_aad(blob_type: str, blob_id: bytes) -> bytes:
    return b"cloudkeep-blob-v1:" + blob_type.encode() + b":" + blob_id


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
    """Accumulates encoded blobs until the pack reaches its target size."""

    def __init__(self, blob_type: str) -> None:
        self.blob_type = blob_type
        self.buffer = bytearray()  # one growing buffer: no second copy of the pack when it is finished
        self.entries: list[BlobEntry] = []

    @property
    def size(self) -> int:
        return len(self.buffer)

    def add(self, blob_id: bytes, encoded: bytes, raw_length: int) -> None:
        self.entries.append(BlobEntry(self.blob_type, blob_id, len(self.buffer), len(encoded), raw_length))
        self.buffer += encoded

    def __len__(self) -> int:
        return len(self.entries)

    def finish(self, crypter: Crypter) -> tuple[str, bytearray, list[BlobEntry]]:
        """Return ``(pack id, object bytes, entries)``; the writer must not be used afterwards."""
        header = json.dumps([[e.type, e.id.hex(), e.offset, e.length, e.raw_length] for e in self.entries])
        sealed = crypter.encode(header.encode(), _HEADER_AAD)
        body = self.buffer
        body += sealed
        body += struct.pack("<I", len(sealed))
        self.buffer = bytearray()
        return blake3.blake3(body).hexdigest(), body, self.entries


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
