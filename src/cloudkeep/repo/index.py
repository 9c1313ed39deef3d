"""The index: which pack holds each blob. Backups consult it instead of listing the bucket.

Each backup session writes its own index files under ``index/`` (every few packs, so a killed
backup's uploads are reused by the rerun); readers load and merge them all. Index files are
never rewritten in place: prune writes a consolidated file, then deletes the ones it replaced.
"""

from __future__ import annotations

import json
import secrets
import struct
from array import array
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

from cloudkeep.errors import IntegrityError
from cloudkeep.repo.crypto import Crypter
from cloudkeep.repo.pack import BLOB_TYPES, BlobEntry

INDEX_PREFIX = "index/"
RawEntry = tuple[int, bytes, int, int, int]
_AAD = b"cloudkeep-index-v1"


class Location(NamedTuple):
    """A blob's place: pack id plus its entry in that pack (a named tuple, as ``BlobEntry``: one
    per look-up)."""

    pack_id: str
    entry: BlobEntry


_new_tuple = tuple.__new__


class Index:
    """Blob id → location, plus pack id → entries. Not thread-safe: callers hold the repository lock.

    Stored in columns (``array``), not as one object per blob: a machine of many small files has
    one blob per file, and per-blob Python objects cost ~900 bytes each once parsing garbage is
    counted (19 MiB for the 22 k blobs of the 1 GiB benchmark machine); columns cost ~160. A
    ``BlobEntry`` is built only when asked for.
    """

    def __init__(self) -> None:
        self._rows: dict[bytes, int] = {}  # blob id → its first row
        self._ids: list[bytes] = []
        # 32-bit columns (an index file's lengths are 32-bit; offsets past 4 GiB widen them all,
        # ``_widen``): 64-bit ones were 1.8 MiB more for the mail store's 90,000 blobs
        self._pack: array[int] = array("I")  # row → pack number
        self._offset: array[int] = array("I")
        self._length: array[int] = array("I")
        self._raw_length: array[int] = array("I")
        self._type: array[int] = array("b")
        self._pack_ids: list[str] = []  # pack number → pack id
        self._pack_rows: dict[str, array[int]] = {}  # live packs only
        self._copies: dict[bytes, list[int]] = {}  # every row of a blob stored in several packs
        # pack id → when its writer started uploading it (epoch seconds), where an index file says:
        # with immutability by generations, the pack's lock is that time + the default period.
        self.written: dict[str, int] = {}

    @property
    def packs(self) -> Mapping[str, list[BlobEntry]]:
        """Pack id → its entries. A view made on each use: kept as an attribute, it and the index
        held each other, so an index replaced by a reload (prune, check, a long-lived process)
        stayed until a full collection found the cycle (13 MiB for the mail store's 90,000 blobs)."""
        return _PackView(self)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def _entry(self, row: int) -> BlobEntry:
        # the tuple made directly: a named tuple's own constructor is a Python function around it
        return _new_tuple(
            BlobEntry,
            (
                BLOB_TYPES[self._type[row]],
                self._ids[row],
                self._offset[row],
                self._length[row],
                self._raw_length[row],
            ),
        )

    def get(self, blob_id: bytes) -> Location | None:
        """A restore's plan calls this once per chunk: one tuple each, made directly."""
        row = self._rows.get(blob_id)
        if row is None:
            return None
        return _new_tuple(Location, (self._pack_ids[self._pack[row]], self._entry(row)))

    def locations(self, blob_id: bytes) -> list[Location]:
        """Every live pack holding the blob, the one ``get`` returns first: whoever restores must read
        a copy it holds the key for (format 3 grants) or trusts (vouched packs)."""
        first = self.get(blob_id)
        if first is None:
            return []
        others = [
            Location(pack_id, self._entry(row))
            for row in self._copies.get(blob_id, ())
            if (pack_id := self._pack_ids[self._pack[row]]) in self._pack_rows and pack_id != first.pack_id
        ]
        return [first, *others]

    def add_pack(self, pack_id: str, entries: Iterable[BlobEntry], written: int | None = None) -> None:
        self.add_rows(
            pack_id,
            ((BLOB_TYPES.index(e.type), e.id, e.offset, e.length, e.raw_length) for e in entries),
            written,
        )

    def add_rows(self, pack_id: str, rows: Iterable[RawEntry], written: int | None = None) -> None:
        """Add a pack from raw ``(type number, id, offset, length, raw length)`` rows.

        A blob found in several packs points at the most recently written one (the longest default
        lock): a chunk written again because its old pack's lock was too short is not rewritten by
        every later backup.
        """
        if written:
            self.written[pack_id] = max(written, self.written.get(pack_id, 0))
        if pack_id in self._pack_rows:  # listed by two index files: packs are content-addressed, same entries
            return
        number = len(self._pack_ids)
        self._pack_ids.append(pack_id)
        pack_rows = self._pack_rows[pack_id] = array("I")
        for blob_type, blob_id, offset, length, raw_length in rows:
            row = len(self._ids)
            try:
                self._offset.append(offset)
                self._length.append(length)
                self._raw_length.append(raw_length)
            except OverflowError:
                self._widen(row)
                self._offset.append(offset)
                self._length.append(length)
                self._raw_length.append(raw_length)
            self._ids.append(blob_id)
            self._pack.append(number)
            self._type.append(blob_type)
            pack_rows.append(row)
            first = self._rows.setdefault(blob_id, row)
            if first != row:
                self._copies.setdefault(blob_id, [first]).append(row)
            if written and first != row and written > self.written.get(self._pack_ids[self._pack[first]], 0):
                self._rows[blob_id] = row

    def _widen(self, rows: int) -> None:
        """The offset and length columns as 64-bit, cut to ``rows`` (a row that overflowed them
        part way is appended again)."""
        self._offset, self._length, self._raw_length = (
            array("q", column[:rows]) for column in (self._offset, self._length, self._raw_length)
        )

    def remove_packs(self, pack_ids: set[str]) -> None:
        """Forget packs; their rows stay as dead weight until the index is next loaded."""
        for pack_id in pack_ids:
            self.written.pop(pack_id, None)
            for row in self._pack_rows.pop(pack_id, array("I")):
                if self._rows.get(self._ids[row]) == row:
                    del self._rows[self._ids[row]]
        # A blob may also live in a surviving pack (after a repack): point at that copy.
        for rows in self._pack_rows.values():
            for row in rows:
                self._rows.setdefault(self._ids[row], row)

    def extent(self, pack_id: str) -> int:
        """Where the pack's last blob ends (0 when the index does not list the pack)."""
        offset, length = self._offset, self._length
        return max((offset[row] + length[row] for row in self._pack_rows.get(pack_id, ())), default=0)

    def entries_of(self, pack_id: str) -> list[BlobEntry]:
        return [self._entry(row) for row in self._pack_rows[pack_id]]

    def pack_entries(self) -> Iterator[tuple[str, list[BlobEntry]]]:
        for pack_id in list(self._pack_rows):
            yield pack_id, self.entries_of(pack_id)


class _PackView(Mapping[str, list[BlobEntry]]):
    """``Index.packs``: pack id → its entries, built on each lookup."""

    def __init__(self, index: Index) -> None:
        self._index = index

    def __getitem__(self, pack_id: str) -> list[BlobEntry]:
        return self._index.entries_of(pack_id)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._index._pack_rows))

    def __len__(self) -> int:
        return len(self._index._pack_rows)

    def __contains__(self, pack_id: object) -> bool:
        return pack_id in self._index._pack_rows


_MAGIC = b"CKIDX2\n"
_PACK_HEAD = struct.Struct("<HI")  # pack id length, blob count
# Version 3 (written only where packs' write times are known, i.e. immutability by generations):
# each pack head also carries when its upload started (epoch seconds; 0 = unknown).
_MAGIC3 = b"CKIDX3\n"
_PACK_HEAD3 = struct.Struct("<HIq")
_RECORD = struct.Struct("<B32sQII")  # type, id, offset, length, raw length: 49 bytes per blob


def pack_records(entries: Iterable[BlobEntry]) -> bytes:
    """A pack's entries as an index file records them. A backup keeps these for the packs its
    next index file names, not the entries: 49 bytes a blob, where the entries (with their
    offsets and lengths as objects) were ~170; a first backup of a mail store named 69,000 blobs
    in its first index file, 12 MiB of entries held until it was written."""
    return b"".join(
        _RECORD.pack(BLOB_TYPES.index(e.type), e.id, e.offset, e.length, e.raw_length) for e in entries
    )


def encode_index_file(
    crypter: Crypter,
    packs: Mapping[str, list[BlobEntry] | bytes],
    written: Mapping[str, int] | None = None,
    *,
    aad: bytes = _AAD,
) -> bytes:
    """Binary records, not JSON: parsing a JSON index costs ~5x its size in short-lived objects
    (and the fragmented heap they leave); fixed records are read straight into ``Index`` columns.
    A pack's entries may be given as its records already (``pack_records``).

    Version 3 (with each pack's write time) only when ``written`` knows one of ``packs``: other
    repositories keep version 2, which readers before immutability by generations understand.
    """
    times = {p: written[p] for p in packs if written and written.get(p)}
    out = bytearray(_MAGIC3 if times else _MAGIC)
    for pack_id, entries in packs.items():
        records = entries if isinstance(entries, bytes) else pack_records(entries)
        count, rest = divmod(len(records), _RECORD.size)
        assert not rest, "records are whole"
        name = pack_id.encode()
        if times:
            out += _PACK_HEAD3.pack(len(name), count, times.get(pack_id, 0)) + name
        else:
            out += _PACK_HEAD.pack(len(name), count) + name
        out += records
    return crypter.encode(memoryview(out), aad)


def read_index_file(
    crypter: Crypter, key: str, data: bytes, written: dict[str, int] | None = None, *, aad: bytes = _AAD
) -> list[tuple[str, Iterable[RawEntry]]]:
    """(pack id, its blobs as ``(type number, id, offset, length, raw length)``) for each pack.

    The whole file is validated before anything is returned (so a damaged file adds nothing);
    binary records are then unpacked lazily. Index files written as JSON are read too. Packs'
    write times (version 3) go into ``written`` when given. ``aad``: the file kind (vouched files
    use the same records under their own).
    """
    what = f"index file {key}"
    plain = crypter.decode(data, aad, what)
    packs: list[tuple[str, Iterable[RawEntry]]] = []
    times: dict[str, int] = {}
    try:
        v3 = plain.startswith(_MAGIC3)
        head = _PACK_HEAD3 if v3 else _PACK_HEAD
        if not v3 and not plain.startswith(_MAGIC):
            for item in json.loads(plain)["packs"]:
                rows = [(BLOB_TYPES.index(t), bytes.fromhex(i), o, n, r) for t, i, o, n, r in item["blobs"]]
                packs.append((item["id"], rows))
            return packs
        view, pos = memoryview(plain), len(_MAGIC)
        while pos < len(view):
            name_length, count, *when = head.unpack_from(view, pos)
            pos += head.size
            pack_id = bytes(view[pos : pos + name_length]).decode()
            pos += name_length
            if when and when[0] < 0:
                raise ValueError("negative write time")
            if when and when[0]:
                times[pack_id] = when[0]
            end = pos + count * _RECORD.size
            if end > len(view):
                raise ValueError("truncated")
            if any(view[i] >= len(BLOB_TYPES) for i in range(pos, end, _RECORD.size)):
                raise ValueError("unknown blob type")
            packs.append((pack_id, _RECORD.iter_unpack(view[pos:end])))
            pos = end
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise IntegrityError(f"{what}: malformed ({exc})") from None
    if written is not None:
        written.update(times)
    return packs


def decode_index_file(crypter: Crypter, key: str, data: bytes) -> dict[str, list[BlobEntry]]:
    return {
        pack_id: [BlobEntry(BLOB_TYPES[t], i, o, n, r) for t, i, o, n, r in rows]
        for pack_id, rows in read_index_file(crypter, key, data)
    }


def new_index_key(writer_prefix: str = "") -> str:
    return writer_prefix + INDEX_PREFIX + secrets.token_hex(16)
