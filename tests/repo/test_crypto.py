"""The sealing primitives, in particular the reusable-buffer paths the data path relies on."""

from __future__ import annotations

import os
import threading

import pytest
import zstandard

from cloudkeep.errors import IntegrityError
from cloudkeep.repo import crypto
from cloudkeep.repo.crypto import (
    CODEC_RAW,
    CODEC_ZSTD,
    DECODE_BUFFER_MAX,
    NONCE_SIZE,
    Crypter,
    MasterKey,
    new_nonce,
)

COMPRESSIBLE = b"cloudkeep backs up cloud machines. " * 3000
RANDOM = os.urandom(300_000)


@pytest.fixture
def crypter() -> Crypter:
    return Crypter(MasterKey.generate())


@pytest.mark.parametrize(
    "data", [COMPRESSIBLE, RANDOM, b"tiny", b""], ids=["text", "random", "tiny", "empty"]
)
def test_buffer_paths_are_the_same_format(crypter: Crypter, data: bytes) -> None:
    """Each buffer path reads and writes exactly what its allocating twin does."""
    sealed = bytes(crypter.encode_into_buffer(data, b"aad"))
    assert crypter.decode(sealed, b"aad", "blob") == data
    assert bytes(crypter.decode_into_buffer(crypter.encode(data, b"aad"), b"aad", "blob")) == data
    codec = crypter.open(sealed, b"aad", "blob")[0]
    assert codec == (CODEC_ZSTD if data is COMPRESSIBLE else CODEC_RAW)


def test_buffer_grows_for_bigger_blobs_and_stays_correct(crypter: Crypter) -> None:
    small, big = os.urandom(1000), os.urandom(3 * 2**20)
    first = bytes(crypter.encode_into_buffer(small, b"a"))
    second = bytes(crypter.encode_into_buffer(big, b"a"))
    assert crypter.decode(first, b"a", "x") == small and crypter.decode(second, b"a", "x") == big
    assert first[:NONCE_SIZE] != second[:NONCE_SIZE]  # a fresh nonce for every blob


@pytest.mark.parametrize("damage", ["flip", "truncate", "aad"])
def test_damage_is_refused_on_the_buffer_path(crypter: Crypter, damage: str) -> None:
    sealed = bytearray(crypter.encode_into_buffer(COMPRESSIBLE, b"aad"))
    aad = b"aad"
    if damage == "flip":
        sealed[len(sealed) // 2] ^= 1
    elif damage == "truncate":
        sealed = sealed[:20]
    else:
        aad = b"another blob"
    with pytest.raises(IntegrityError, match=r"blob 7: (authentication failed|truncated)"):
        crypter.decode_into_buffer(bytes(sealed), aad, "blob 7")


def _sealed_zstd(crypter: Crypter, payload: bytes) -> bytes:
    """A blob sealed with the right key whose zstd payload is whatever the caller made."""
    return crypter.seal(bytes((CODEC_ZSTD,)) + payload, b"aad")


def test_decompressed_into_the_buffer_is_what_decompress_gives(crypter: Crypter) -> None:
    """Sizes the buffer path takes, grows for (past its 1 MiB start), and leaves to ``decompress``
    (empty; larger than ``DECODE_BUFFER_MAX``)."""
    for data in (b"x" * 100, COMPRESSIBLE, COMPRESSIBLE * 40, b"y" * 10, b"", b"z" * (DECODE_BUFFER_MAX + 1)):
        sealed = _sealed_zstd(crypter, zstandard.ZstdCompressor().compress(data))
        assert bytes(crypter.decode_into_buffer(sealed, b"aad", "blob")) == data
        assert crypter.decode(sealed, b"aad", "blob") == data


@pytest.mark.parametrize("damage", ["truncated", "a second frame", "bytes after it", "size overstated"])
def test_a_frame_not_as_stated_is_refused_on_the_buffer_path(crypter: Crypter, damage: str) -> None:
    """Sealed with the right key (a key holder, or a bug, wrote it): still an error, never short data."""
    frame = zstandard.ZstdCompressor().compress(COMPRESSIBLE)
    if damage == "truncated":
        payload = frame[: len(frame) // 2]
    elif damage == "a second frame":
        payload = frame + zstandard.ZstdCompressor().compress(b"more")
    elif damage == "bytes after it":
        payload = frame + b"junk"
    else:  # a frame that states more than it holds: the same content, its header from a longer one
        longer = zstandard.ZstdCompressor().compress(COMPRESSIBLE + b"!")
        header = zstandard.get_frame_parameters(longer)
        assert header.content_size == len(COMPRESSIBLE) + 1
        payload = longer[:6] + frame[6:]
    with pytest.raises(IntegrityError, match="blob 9: cannot decompress"):
        crypter.decode_into_buffer(_sealed_zstd(crypter, payload), b"aad", "blob 9")


def _opened(crypter: Crypter, sealed: bytes, size: int, aad: bytes = b"aad") -> list[bytes]:
    return list(crypter.opened_pieces(sealed, aad, "blob 5", size))


@pytest.mark.parametrize(
    "data", [COMPRESSIBLE * 10, RANDOM, b"tiny", b""], ids=["text", "random", "tiny", "empty"]
)
def test_opened_in_pieces_is_what_decode_gives(crypter: Crypter, data: bytes) -> None:
    """A large tree is read in pieces, never whole: the pieces, joined, are the blob ``decode``
    gives, each at most the size asked, raw or compressed."""
    sealed = crypter.encode(data, b"aad")
    for size in (1, 1000, 2**16, 2**22):
        if size == 1 and len(data) > 10_000:
            continue  # a million pieces: slow, and nothing more to see
        pieces = _opened(crypter, sealed, size)
        assert b"".join(pieces) == data
        assert all(0 < len(piece) <= size for piece in pieces)
    assert len(_opened(crypter, sealed, 2**16)) == -(-len(data) // 2**16)


@pytest.mark.parametrize("damage", ["flip", "tag", "nonce", "aad", "truncate"])
def test_damage_in_pieces_is_refused_by_the_last_piece(crypter: Crypter, damage: str) -> None:
    """GCM authenticates at the end: a blob read in pieces fails once read, never passes."""
    sealed = bytearray(crypter.encode(COMPRESSIBLE * 10, b"aad"))
    aad = b"aad"
    if damage == "flip":
        sealed[len(sealed) // 2] ^= 1
    elif damage == "tag":
        sealed[-1] ^= 1
    elif damage == "nonce":
        sealed[0] ^= 1
    elif damage == "aad":
        aad = b"another blob"
    else:
        sealed = sealed[:20]
    with pytest.raises(IntegrityError, match=r"blob 5: (authentication failed|truncated)"):
        _opened(crypter, bytes(sealed), 4096, aad)


@pytest.mark.parametrize("payload", ["not zstd", "unknown codec", "empty"])
def test_a_bad_payload_in_pieces_is_named_and_a_tampered_one_is_tampered(
    crypter: Crypter, payload: str
) -> None:
    """Sealed by the key, a payload that does not open is named for what it is; the same bytes
    tampered with are refused as tampered (what ``open`` says of them), whichever shows first."""
    plain = {"not zstd": bytes((CODEC_ZSTD,)) + b"garbage" * 1000, "unknown codec": b"\x07abc", "empty": b""}[
        payload
    ]
    sealed = bytearray(crypter.seal(plain, b"aad"))
    expected = {
        "not zstd": "cannot decompress",
        "unknown codec": "unknown codec 7",
        "empty": "empty payload",
    }[payload]
    with pytest.raises(IntegrityError, match=f"blob 5: {expected}"):
        _opened(crypter, bytes(sealed), 4096)
    sealed[-1] ^= 1
    with pytest.raises(IntegrityError, match="blob 5: authentication failed"):
        _opened(crypter, bytes(sealed), 4096)


@pytest.mark.parametrize(
    "damage", ["truncated", "a second frame", "bytes after it", "size overstated", "size not stated"]
)
def test_a_frame_not_as_stated_is_refused_on_every_path(crypter: Crypter, damage: str) -> None:
    """What the buffer path refuses, a reading in pieces and a whole decode refuse too, never giving
    short or longer data (zstd's stream reader alone gave a cut frame's bytes, and read on into a
    second frame; ``decompress`` alone ignored what follows the first frame)."""
    frame = zstandard.ZstdCompressor().compress(COMPRESSIBLE)
    payload = {
        "truncated": frame[: len(frame) // 2],
        "a second frame": frame + zstandard.ZstdCompressor().compress(b"more"),
        "bytes after it": frame + b"junk",
        "size overstated": zstandard.ZstdCompressor().compress(COMPRESSIBLE + b"!")[:6] + frame[6:],
        "size not stated": zstandard.ZstdCompressor(write_content_size=False).compress(COMPRESSIBLE),
    }[damage]
    sealed = _sealed_zstd(crypter, payload)
    with pytest.raises(IntegrityError, match="blob 5: cannot decompress"):
        crypter.decode_into_buffer(sealed, b"aad", "blob 5")
    with pytest.raises(IntegrityError, match="blob 5: cannot decompress"):
        crypter.decode(sealed, b"aad", "blob 5")
    with pytest.raises(IntegrityError, match="blob 5: cannot decompress"):
        _opened(crypter, sealed, 4096)
    with pytest.raises(IntegrityError, match="blob 5: authentication failed"):
        _opened(crypter, sealed[:-1] + bytes([sealed[-1] ^ 1]), 4096)


def test_peeked_bytes_are_read_again(crypter: Crypter) -> None:
    """The frame header is peeked at before zstd reads the frame: every byte still comes once."""
    sealed = memoryview(crypter.seal(RANDOM, b"aad"))
    for sizes in ([5, 3, 100, -1], [2, 0, 7, 1000, 2**20], [-1]):
        stream = crypto._Decrypting(crypter.key.encryption, sealed, b"aad")
        read = b""
        for size in sizes:
            peeked = stream.peek(4)
            got = stream.read(size)
            assert got[:4] == peeked[: len(got)]
            read += got
        assert read == RANDOM[: len(read)] and stream.authentic()


def test_nonces_never_repeat_across_threads() -> None:
    """Nonces come from a per-thread supply read in bulk: no two blobs, on any thread, share one."""
    seen: list[bytes] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [new_nonce() for _ in range(3000)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 12_000 and len(set(seen)) == len(seen)
    assert all(len(nonce) == NONCE_SIZE for nonce in seen)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_does_not_reuse_its_parents_nonces() -> None:
    """Without a fresh supply the child would seal with the very nonces its parent uses next."""
    new_nonce()  # this thread's supply is read and has nonces left
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, b"".join(new_nonce() for _ in range(4)))
        finally:
            os._exit(0)
    os.close(write)
    child = b""
    while len(child) < 4 * NONCE_SIZE and (part := os.read(read, 1024)):
        child += part
    os.close(read)
    assert os.waitpid(pid, 0)[1] == 0
    ours = {new_nonce() for _ in range(4)}
    assert len(child) == 4 * NONCE_SIZE
    assert not ours & {child[i : i + NONCE_SIZE] for i in range(0, len(child), NONCE_SIZE)}


@pytest.mark.parametrize("data", [COMPRESSIBLE * 20, os.urandom(2**20) + COMPRESSIBLE], ids=["text", "mixed"])
def test_a_blob_above_one_call_is_compressed_in_pieces_and_reads_back(
    crypter: Crypter, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``WHOLE_MOST`` (a large folder's tree) zstd runs a piece at a time: one frame that
    states its size, read back by both decoding paths, the codec still chosen by the saving."""
    monkeypatch.setattr(crypto, "WHOLE_MOST", 64 * 1024)
    monkeypatch.setattr(crypto, "_PIECE", 16 * 1024)
    for sealed in (crypter.encode(data, b"aad"), bytes(crypter.encode_into_buffer(data, b"aad"))):
        plain = crypter.open(sealed, b"aad", "blob")
        assert plain[0] == CODEC_ZSTD
        assert zstandard.get_frame_parameters(plain[1:]).content_size == len(data)
        assert crypter.decode(sealed, b"aad", "blob") == data
        assert bytes(crypter.decode_into_buffer(sealed, b"aad", "blob")) == data


def test_threads_that_compress_in_turn_share_one_zstd_context(crypter: Crypter) -> None:
    """A context is lent per compression, not kept per thread (each kept the size of the largest
    input it had compressed: 14 MiB over a backup's threads); a pack's crypter lends the same."""
    pack_crypter = crypter.with_encryption_key(os.urandom(32))
    for user in (crypter, pack_crypter, crypter, pack_crypter):
        thread = threading.Thread(target=user.encode, args=(COMPRESSIBLE, b"aad"))
        thread.start()
        thread.join()
    assert len(crypter._compressors._free) == 1
    assert len(crypter._estimator._samplers._free) == 1
    sealed = pack_crypter.encode(COMPRESSIBLE, b"aad")
    assert pack_crypter.open(sealed, b"aad", "blob")[0] == CODEC_ZSTD
