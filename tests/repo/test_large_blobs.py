"""Blobs above ``WHOLE_MOST`` (a large folder's tree): stored from pieces, never joined, compressed a
piece at a time and sealed into the pack as they come (``BlobWriter.save_pieces``)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import zstandard

from cloudkeep.errors import RepositoryWriteError
from cloudkeep.repo import Repository, archiver, backup_files, check, crypto, restore, writer
from cloudkeep.repo.crypto import CODEC_RAW, CODEC_ZSTD, Crypter, MasterKey
from cloudkeep.repo.pack import STAGING_PACK_PREFIX, TREE
from cloudkeep.repo.writer import BlobWriter
from cloudkeep.storage import ObjectStore
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, subtree_of

TEXT = b'{"name":"1700000000.M1P2.mail:2,S","content":["ab12"],"size":4096},' * 4000
NOISE = os.urandom(300_000)


def pieces_of(data: bytes, *sizes: int) -> list[bytes]:
    """``data`` cut at ``sizes`` (cycled), an empty piece between the first two."""
    out, at, i = [], 0, 0
    while at < len(data):
        size = sizes[i % len(sizes)]
        out.append(data[at : at + size])
        at, i = at + size, i + 1
    return [out[0], b"", *out[1:]]


@pytest.mark.parametrize(
    ("data", "codec"),
    [(TEXT, CODEC_ZSTD), (NOISE, CODEC_RAW), (NOISE[:100_000] + TEXT, CODEC_ZSTD)],
    ids=["text", "noise", "mixed"],
)
def test_sealed_in_pieces_is_what_one_call_seals(
    data: bytes, codec: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pieces joined open as the blob ``encode`` makes: same codec, a frame that states its
    size (the restore's buffer path needs it), the same bytes back by both decoding paths."""
    monkeypatch.setattr(crypto, "_PIECE", 16 * 1024)
    crypter = Crypter(MasterKey.generate())
    pieces = pieces_of(data, 70_001, 9_999)
    assert crypter.content_id_of(pieces) == crypter.content_id(data)
    chosen, payload = crypter.payload_pieces(pieces, len(data))
    assert chosen == codec == crypter.open(crypter.encode(data, b"aad"), b"aad", "blob")[0]
    sealed = b"".join(crypter.seal_pieces(chosen, payload, b"aad"))
    assert crypter.decode(sealed, b"aad", "blob") == data
    assert bytes(crypter.decode_into_buffer(sealed, b"aad", "blob")) == data
    with pytest.raises(Exception, match="authentication failed"):
        crypter.decode(sealed, b"other aad", "blob")


@pytest.mark.parametrize("version", [2, 3], ids=["shared-key", "pack-keys"])
def test_a_large_blob_saved_from_pieces_reads_back_and_dedups(
    store: ObjectStore, version: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between small blobs of the same pack (format 3: each pack its own key), a blob above
    ``WHOLE_MOST`` goes in pieces; it reads back whole, and saving it again stores nothing."""
    monkeypatch.setattr(writer, "WHOLE_MOST", 64 * 1024)
    repo = Repository.create(
        store, PASSWORD, pack_size=2**20, kdf=FAST_KDF, chunker=SMALL_CHUNKS, version=version
    )
    big = [TEXT[:100_000], TEXT[100_000:], NOISE]
    small = [b"before " * 100, b"after " * 100]
    with BlobWriter(repo, hostname="h") as blobs:
        before, _ = blobs.save(TREE, small[0])
        big_id, new = blobs.save_pieces(TREE, big)
        after, _ = blobs.save(TREE, small[1])
        assert new and big_id == repo.crypter.content_id(b"".join(big))
        assert blobs.save_pieces(TREE, big) == (big_id, False)
        assert blobs.save(TREE, b"".join(big)) == (big_id, False)  # one call routes to the pieces
        assert blobs.stats.blobs_new == 3 and blobs.stats.bytes_new == len(b"".join([*big, *small]))
        blobs.close()
    again = Repository.open(store, PASSWORD)
    assert again.load_blob(big_id) == b"".join(big)
    assert [again.load_blob(b) for b in (before, after)] == small
    assert again.locate(big_id).pack_id == again.locate(before).pack_id  # one pack, its order kept
    assert check(again, read_data=True).ok


def test_a_write_failing_part_way_through_a_large_blob_fails_the_session(
    repo: Repository, store: ObjectStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The pack is half-written: the session is over (no later blob may land in it), the error
    says why, the repository is unharmed and the next backup stores everything."""
    monkeypatch.setattr(writer, "WHOLE_MOST", 64 * 1024)
    monkeypatch.setattr(crypto, "_PIECE", 16 * 1024)
    real_write, written = os.write, []

    def full_after_two(fd: int, data: bytes) -> int:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(STAGING_PACK_PREFIX):
            written.append(len(data))
            if len(written) > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_after_two)
    blobs = BlobWriter(repo, hostname="h")
    with pytest.raises(RepositoryWriteError, match="no space left to stage a pack"):
        blobs.save_pieces(TREE, [NOISE, NOISE[::-1]])
    with pytest.raises(RepositoryWriteError):
        blobs.save(TREE, b"a later blob")
    blobs.abort()
    monkeypatch.undo()
    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):
        (src / f"message-{i:04}").write_bytes(b"x" * i)
    monkeypatch.setattr(writer, "WHOLE_MOST", 4 * 1024)  # the folder's tree is above it
    snap = backup_files(Repository.open(store, PASSWORD), [src], hostname="h")
    assert check(Repository.open(store, PASSWORD), read_data=True).ok and snap.stats["files"] == 300
    restore(Repository.open(store, PASSWORD), snap.id, tmp_path / "out")
    back = tmp_path / "out" / str(src).lstrip("/")
    assert sorted(p.name for p in back.iterdir()) == sorted(p.name for p in src.iterdir())
    assert all((back / p.name).read_bytes() == p.read_bytes() for p in src.iterdir())


@pytest.mark.parametrize("data", [TEXT * 3, NOISE, b"x" * 17, b""], ids=["text", "noise", "tiny", "empty"])
def test_a_blob_streamed_as_made_states_its_size_and_reads_back(data: bytes) -> None:
    """Hashed and compressed as its pieces come, the frame gets its size written into its header
    once known: both decoding paths read it (the buffer path needs the size), and so does zstd."""
    crypter = Crypter(MasterKey.generate())
    blob_id, size, payload = crypter.stream_payload(iter(pieces_of(data, 777, 70_001) if data else []))
    assert (blob_id, size) == (crypter.content_id(data), len(data))
    assert zstandard.get_frame_parameters(b"".join(payload)).content_size == len(data)
    sealed = b"".join(crypter.seal_pieces(CODEC_ZSTD, payload, b"aad"))
    assert crypter.decode(sealed, b"aad", "blob") == data
    assert bytes(crypter.decode_into_buffer(sealed, b"aad", "blob")) == data


def test_a_stream_that_fails_part_way_leaves_its_context_fit_to_lend() -> None:
    """The pieces come from the walk (a node that cannot be made raises): the zstd context goes
    back mid-frame, and the next blob compressed with it is whole."""
    crypter = Crypter(MasterKey.generate())

    def failing() -> Iterator[bytes]:
        yield TEXT
        raise OSError("a node could not be made")

    with pytest.raises(OSError, match="could not be made"):
        crypter.stream_payload(failing())
    assert crypter.decode(crypter.encode(TEXT, b"aad"), b"aad", "blob") == TEXT
    _, _, payload = crypter.stream_payload(iter([TEXT, TEXT]))
    assert crypter.decode(b"".join(crypter.seal_pieces(CODEC_ZSTD, payload, b"a")), b"a", "x") == TEXT * 2


def test_a_large_folders_tree_streamed_in_an_incremental_restores(
    repo: Repository, store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large folder's tree is stored as its nodes are made (``save_stream``), on the first
    backup and on an incremental that changed it: it restores byte for byte, and a rerun reuses
    the tree."""
    monkeypatch.setattr(archiver, "LARGE_FOLDER", 8)
    streamed: list[bytes] = []
    real = BlobWriter.save_stream

    def spy(self: BlobWriter, blob_type: str, pieces: Iterable[bytes]) -> tuple[bytes, bool]:
        found = real(self, blob_type, pieces)
        streamed.append(found[0])
        return found

    monkeypatch.setattr(BlobWriter, "save_stream", spy)
    src, cache = tmp_path / "src", tmp_path / "cache"
    (src / "cur").mkdir(parents=True)
    for i in range(40):
        (src / "cur" / f"{1700000000 + i}.M{i}P1.host:2,S").write_bytes(os.urandom(200 + i))
    first = backup_files(repo, [src], hostname="h", cache_dir=cache)
    assert streamed == [subtree_of(repo, first.tree, src / "cur")]
    streamed.clear()
    (src / "cur" / "1700000040.M40P1.host:2,S").write_bytes(b"new mail")
    (src / "cur" / "1700000003.M3P1.host:2,S").unlink()
    second = backup_files(Repository.open(store, PASSWORD), [src], hostname="h", cache_dir=cache)
    assert streamed == [subtree_of(Repository.open(store, PASSWORD), second.tree, src / "cur")]
    restore(Repository.open(store, PASSWORD), second.id, tmp_path / "out")
    back = tmp_path / "out" / str(src / "cur").lstrip("/")
    assert {p.name: p.read_bytes() for p in back.iterdir()} == {
        p.name: p.read_bytes() for p in (src / "cur").iterdir()
    }
    third = backup_files(Repository.open(store, PASSWORD), [src], hostname="h", cache_dir=cache)
    assert (
        subtree_of(Repository.open(store, PASSWORD), third.tree, src / "cur") == streamed[0]
        and third.stats["bytes_read"] == 0
    )
    assert len(streamed) == 1  # the streamed tree reused, not made again
