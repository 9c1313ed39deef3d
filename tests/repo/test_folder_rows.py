"""A large folder's cache row is stored in pieces and read back a piece at a time, as the walk
asks for its names: a changed maildir folder of 45,000 messages no longer holds its whole last row
decoded beside its new listing. Rows stored whole (small folders, older versions) still read."""

from __future__ import annotations

import hashlib
import marshal
import os
from pathlib import Path

import pytest

from cloudkeep.repo import Repository, backup_files, folders, restore
from cloudkeep.repo import cache as cache_module
from cloudkeep.repo.cache import FileCache, FolderRow, RowSpill, StoredRow
from cloudkeep.repo.crypto import ID_SIZE
from cloudkeep.repo.folders import (
    _PreviousRow,
    _RowEntry,
    _RowWriter,
    encode_row,
    join_row,
    listing_signature,
    listing_signature_of,
    row_entries,
)
from tests.repo.conftest import restored, until_ctime_moves


def _row(count: int) -> list[_RowEntry]:
    return [((f"m{i:04}", 0o100644, i), bytes([i % 256]) * ID_SIZE, True) for i in range(count)]


def test_a_large_row_is_read_a_piece_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folders, "ROW_PIECE", 8)
    row = _row(50)
    data = encode_row(row)
    assert all(isinstance(piece, bytes) for piece in marshal.loads(data))  # 7 pieces
    previous = _PreviousRow(data)
    assert not previous.found  # nothing decoded before a name is asked for
    held = []
    for entry in row:
        name = str(entry[0][0])
        if name == "m0020":  # a file deleted since: the next names still come
            continue
        assert previous.pop(name) == entry
        held.append(len(previous.found))
    assert max(held) <= 8  # one piece decoded at a time (and the name passed over)
    assert previous.pop("m0020") == row[20]  # passed over, still there (a name asked late)
    assert previous.pop("m0003") is None  # handed out already: each entry once


def test_a_name_the_row_does_not_have_decodes_no_further_than_its_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(folders, "ROW_PIECE", 8)
    previous = _PreviousRow(encode_row(_row(50)))
    assert previous.pop("m0009a") is None  # a new file between two pieces' names
    assert len(previous.pieces) == 5  # pieces 1 and 2 decoded, the other five not
    assert previous.pop("zzz") is None  # past the last name: everything decoded, nothing found
    assert not previous.pieces and len(previous.found) == 50


def test_a_row_in_pieces_is_decoded_in_place_and_let_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pieces are decoded where they lie in the row (no copy of them all): a large row in the
    cache is read there, its pieces' heads first, then a piece as the walk asks for its names;
    the row is let go once the last piece is decoded."""
    monkeypatch.setattr(folders, "ROW_PIECE", 8)
    monkeypatch.setattr(cache_module, "_WRITE_IN_PIECES", 100)
    row = _row(50)
    data = encode_row(row)
    cache = FileCache(tmp_path, "repo", "host", ["/src"])
    cache.record_folder("/src/box", FolderRow(b"l", b"s", b"t", b"", data))
    cache.commit()
    cache = FileCache(tmp_path, "repo", "host", ["/src"])
    reads: list[int] = []
    real = StoredRow.read

    def read(self: StoredRow, start: int, length: int) -> bytes:
        reads.append(length)
        return real(self, start, length)

    monkeypatch.setattr(StoredRow, "read", read)
    try:
        stored = cache.folder("/src/box")
        assert stored is not None and isinstance(stored.keys, StoredRow)
        for given in (data, stored.keys):
            reads.clear()
            previous = _PreviousRow(given)
            assert previous.pop("m0000") == row[0]
            assert len(previous.pieces) == 6 and previous._read is not None
            if given is stored.keys:  # the list's head and each piece's, then the first piece
                assert reads[:8] == [5] * 8 and len(reads) == 9 and reads[8] < len(data) / 6
            assert previous.pop("m0049") == row[49]
            assert previous._read is None and not previous.pieces
    finally:
        cache.discard()


def _damaged(data: bytes) -> list[bytes]:
    """A row in pieces cut short, lengthened, or with a piece's type or length byte wrong."""
    length_at = 5 + 1  # the first piece's length, after the list head and its type byte
    return [
        data[:-1],
        data + b"\0",
        data[:5] + b"t" + data[6:],
        data[:length_at] + b"\xff\xff\xff\x7f" + data[length_at + 4 :],
        data[:length_at] + b"\xff\xff\xff\xff" + data[length_at + 4 :],
        data[:1] + b"\x00\x00\x00\x00" + data[5:],
        data[:1] + b"\xff\xff\xff\x7f" + data[5:],
        b"[",
        b"",
    ]


@pytest.mark.parametrize("case", range(9))
def test_a_damaged_row_in_pieces_gives_nothing_wrong(case: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache row is local but may be damaged: one whose pieces do not lie exactly as written
    gives no entry that was not in it, and never raises (its files are read anew)."""
    monkeypatch.setattr(folders, "ROW_PIECE", 8)
    row = _row(50)
    previous = _PreviousRow(_damaged(encode_row(row))[case])
    for entry in row:
        assert previous.pop(str(entry[0][0])) in (None, entry)
    assert previous.pop("zzz") is None


@pytest.mark.parametrize("count", [9, 16, 17, 50])
def test_a_large_row_is_the_marshal_list_of_its_pieces(
    count: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written a piece at a time, a large row (and one joined from a worker's entries) is byte
    for byte what marshal makes of the list of its pieces: what every version reads."""
    monkeypatch.setattr(folders, "ROW_PIECE", 8)
    row = _row(count)
    pieces = [marshal.dumps(row[i : i + 8], 2) for i in range(0, count, 8)]
    assert encode_row(row) == marshal.dumps(pieces, 2)
    assert join_row([marshal.dumps(entry, 2) for entry in row]) == encode_row(row)
    entries = [marshal.dumps(entry, 2) for entry in row]
    spill = RowSpill(tmp_path)  # a large folder's row from its parts, written as it is joined
    assert join_row(entries, spill) == b"" and spill.getvalue() == encode_row(row)
    assert entries == [b""] * count  # each piece's entries let go once written


@pytest.mark.parametrize("count", [0, 5, 8, 9, 16, 17, 50])
def test_a_row_made_entry_by_entry_is_the_row_made_at_once(
    count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder's row marshalled as its nodes are made (the stat keys let go as they are given)
    is byte for byte ``encode_row``'s, whole or in pieces, with the same chunks; and it reads
    back entry by entry (a folder that turned inexact gives its files their own rows from it)."""
    monkeypatch.setattr(folders, "ROW_PIECE", 8)
    row = _row(count)
    row[1:2] = [(("sub", 0o40755, 1), None, False)] if count > 1 else []  # a folder: no chunks
    made = _RowWriter(len(row))
    for entry in row:
        made.add(entry)
    assert made.value() == encode_row(row)
    assert made.chunks() == b"".join(entry[1] or b"" for entry in row)
    assert list(row_entries(made.value())) == row


def test_a_listing_hashed_in_runs_is_the_listings_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder stored in parts hashes its keys part by part: the signature the walk gives the
    same listing, or the next backup would read every file of the folder again."""
    keys = [key for key, _, _ in _row(30)]
    folder = ("box", 0o40755, 7)
    runs = [b"".join(marshal.dumps(k, 2) for k in keys[i : i + 7]) for i in range(0, 30, 7)]
    assert listing_signature_of(folder, 30, runs) == listing_signature(folder, keys)
    assert listing_signature_of(folder, 29, runs) != listing_signature(folder, keys)
    whole = hashlib.blake2b(marshal.dumps((folder, keys), 2), digest_size=20).digest()
    for piece in (8, 7, 30, 64):  # a large folder's own listing is hashed in runs too: the same
        monkeypatch.setattr(folders, "ROW_PIECE", piece)
        assert listing_signature(folder, keys) == whole


def test_small_rows_stay_whole_and_damaged_pieces_give_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folders, "ROW_PIECE", 8)
    small = _row(8)
    assert marshal.loads(encode_row(small)) == small  # what every version reads
    pieces = [marshal.dumps(_row(20)[:8], 2), b"\x00garbage", marshal.dumps(_row(20)[16:], 2)]
    previous = _PreviousRow(marshal.dumps(pieces, 2))
    assert previous.pop("m0003") == _row(20)[3]
    assert previous.pop("m0010") is None  # its piece did not decode: the file is read anew
    assert previous.pop("m0017") == _row(20)[17]
    assert _PreviousRow(b"\xffnot marshal").pop("m0001") is None
    assert _PreviousRow(marshal.dumps([b"piece", ("m0001",)], 2)).pop("m0001") is None  # mixed: dropped


def test_an_incremental_of_a_large_folder_reads_only_what_changed(
    repo: Repository, tmp_path: Path, spills: list[RowSpill], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder of 60 files, its row in pieces of 4: after a change, a deletion and an addition,
    only the changed and the added file are read, the rest comes from the row, a piece at a time,
    and the restore point is the folder as it is."""
    monkeypatch.setattr(folders, "ROW_PIECE", 4)
    source, cache = tmp_path / "src", tmp_path / "cache"
    box = source / "cur"
    box.mkdir(parents=True)
    for i in range(60):
        (box / f"{i:03}.mail").write_bytes(f"message {i}\n".encode() * (i + 1))
    for _ in range(2):  # both generations of the cache hold the folder's row
        backup_files(repo, [source], cache_dir=cache)
    changed, gone, added = box / "017.mail", box / "030.mail", box / "044a.mail"
    until_ctime_moves(changed, lambda: changed.write_bytes(b"edited\n" * 50))
    os.unlink(gone)
    added.write_bytes(b"new message\n" * 7)
    held: list[int] = []
    pop = _PreviousRow.pop

    def popping(self: _PreviousRow, name: str) -> _RowEntry | None:
        found = pop(self, name)
        held.append(len(self.found))
        return found

    monkeypatch.setattr(_PreviousRow, "pop", popping)
    spills.clear()  # (the two backups before made theirs)
    snapshot = backup_files(repo, [source], cache_dir=cache)
    assert snapshot.stats["bytes_read"] == changed.stat().st_size + added.stat().st_size
    assert snapshot.stats["files_unchanged"] == snapshot.stats["files"] - 2
    assert len(held) >= 59 and max(held) <= 5  # the deleted file's entry, and at most one piece
    assert len(spills) == 1 and len(spills[0]) > 60 * 32  # the folder's new row went through a spill
    target = tmp_path / "out"
    restore(repo, snapshot.id, target)
    out = restored(target, source) / "cur"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in box.iterdir())
    assert all((out / p.name).read_bytes() == p.read_bytes() for p in box.iterdir())
    other = box / "051.mail"  # the next backup decodes that row: only what changed again is read
    until_ctime_moves(other, lambda: other.write_bytes(b"edited again\n"))
    again = backup_files(repo, [source], cache_dir=cache)
    assert again.stats["bytes_read"] == other.stat().st_size
