"""The index: which pack holds each blob. Backups consult it instead of listing the bucket.

Each backup session writes its own index files under ``index/`` (every few packs, so a killed
backup's uploads are reused by the rerun); readers load and merge them all. Index files are
never rewritten in place: prune writes a consolidated file, then deletes the ones it replaced.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cloudkeep.repo.crypto import Crypter
from cloudkeep.repo.pack import BlobEntry

INDEX_PREFIX = "index/"
_AAD = b"cloudkeep-index-v1"


@dataclass(frozen=True, slots=True)
class Location:
    """A blob's place: pack id plus its entry in that pack."""

    pack_id: str
    entry: BlobEntry


class Index:
    """Blob id → location, plus pack id → entries. Not thread-safe: callers hold the repository lock."""

    def __init__(self) -> None:
        self.blobs: dict[bytes, Location] = {}
        self.packs: dict[str, list[BlobEntry]] = {}

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self.blobs

    def __len__(self) -> int:
        return len(self.blobs)

    def get(self, blob_id: bytes) -> Location | None:
        return self.blobs.get(blob_id)

    def add_pack(self, pack_id: str, entries: Iterable[BlobEntry]) -> None:
        entries = list(entries)
        self.packs[pack_id] = entries
        for entry in entries:
            self.blobs.setdefault(entry.id, Location(pack_id, entry))

    def remove_packs(self, pack_ids: set[str]) -> None:
        for pack_id in pack_ids:
            for entry in self.packs.pop(pack_id, []):
                loc = self.blobs.get(entry.id)
                if loc is not None and loc.pack_id == pack_id:
                    del self.blobs[entry.id]
        # A blob may also live in a surviving pack (after a repack): point at that copy.
        for pack_id, entries in self.packs.items():
            for entry in entries:
                self.blobs.setdefault(entry.id, Location(pack_id, entry))

    def pack_entries(self) -> Iterator[tuple[str, list[BlobEntry]]]:
        yield from self.packs.items()


def encode_index_file(crypter: Crypter, packs: dict[str, list[BlobEntry]]) -> bytes:
    body = {
        "version": 1,
        "packs": [
            {"id": pid, "blobs": [[e.type, e.id.hex(), e.offset, e.length, e.raw_length] for e in entries]}
            for pid, entries in packs.items()
        ],
    }
    return crypter.encode(json.dumps(body, separators=(",", ":")).encode(), _AAD)


def decode_index_file(crypter: Crypter, key: str, data: bytes) -> dict[str, list[BlobEntry]]:
    body = json.loads(crypter.decode(data, _AAD, f"index file {key}"))
    return {
        item["id"]: [BlobEntry(t, bytes.fromhex(i), o, n, r) for t, i, o, n, r in item["blobs"]]
        for item in body["packs"]
    }


def new_index_key(writer_prefix: str = "") -> str:
    return writer_prefix + INDEX_PREFIX + secrets.token_hex(16)
