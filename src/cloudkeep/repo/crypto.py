"""Keys and primitives: keyed BLAKE3 content ids, zstd, AES-256-GCM, scrypt key derivation.

Every stored byte string (blob, pack header, index, snapshot, config) is ``nonce || AES-GCM
ciphertext+tag`` with associated data naming what it is, so a blob cannot be swapped for another
or a snapshot passed off as an index without failing authentication.
"""

from __future__ import annotations

import base64
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, cast

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from cloudkeep.errors import AuthenticationError, IntegrityError
from cloudkeep.repo.compression import CompressionEstimator
from cloudkeep.repo.memory import Lent, ThreadBuffers

NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE + 1  # nonce + tag + codec byte
_NONCES_PER_READ = 256
ID_SIZE = 32


def split_ids(ids: bytes) -> list[bytes]:
    """Blob ids stored concatenated (a file's chunks in the file cache or a folder's row), one by one."""
    return [ids[i : i + ID_SIZE] for i in range(0, len(ids), ID_SIZE)]


def iter_ids(ids: bytes) -> Iterator[bytes]:
    """``split_ids`` one at a time, for a look-up that needs no list: a large folder's row has
    50,000 ids (3.5 MiB as a list, at the peak of the walk's listing)."""
    return (ids[i : i + ID_SIZE] for i in range(0, len(ids), ID_SIZE))


CODEC_RAW = 0
CODEC_ZSTD = 1
# Payloads up to this size are sealed in one AESGCM call after a copy behind the codec byte; larger
# ones stream through a GCM encryptor instead of being copied. Building that encryptor costs tens
# of microseconds of Python per blob: most of a small file's sealing time, noise for a large chunk.
ONE_SHOT_MAX = 64 * 1024
# Above this (the largest chunk) a blob is compressed in pieces: zstd's one call first allocates
# the output's upper bound, a copy of the input's size, where a large folder's tree (11 MiB for
# 45,000 messages) compresses to a fifth of it; that copy was the peak of a mail store's backup.
WHOLE_MOST = 8 * 1024 * 1024
_PIECE = 1024 * 1024
_RUN = 256 * 1024  # small pieces joined to this size before they are hashed, compressed or sealed


class _Nonces(threading.local):
    """Random GCM nonces for this thread, read from the kernel 256 at a time.

    A first backup seals one blob per small file: a ``getrandom`` call each was tens of
    thousands of system calls, each releasing the GIL (a hand-off to the other threads).
    A forked child starts with an empty supply, never one its parent also uses."""

    def __init__(self) -> None:
        self.supply, self.used = b"", 0

    def take(self) -> bytes:
        if self.used >= len(self.supply):
            self.supply, self.used = os.urandom(NONCE_SIZE * _NONCES_PER_READ), 0
        self.used += NONCE_SIZE
        return self.supply[self.used - NONCE_SIZE : self.used]


_nonces = _Nonces()


def _forget_nonces() -> None:
    global _nonces
    _nonces = _Nonces()


os.register_at_fork(after_in_child=_forget_nonces)


def new_nonce() -> bytes:
    """A fresh random 96-bit nonce (AES-GCM's random-nonce construction)."""
    return _nonces.take()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


@dataclass(frozen=True)
class MasterKey:
    """The repository's secret: ``encryption`` for AES-GCM, ``id_key`` for keyed BLAKE3 content ids.

    Content ids are keyed so that someone with read access to the bucket cannot confirm whether a
    known file is stored by hashing it themselves.
    """

    encryption: bytes
    id_key: bytes

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(32), secrets.token_bytes(32))

    def to_json(self) -> dict[str, str]:
        return {"encryption": b64(self.encryption), "id_key": b64(self.id_key)}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> MasterKey:
        return cls(unb64(data["encryption"]), unb64(data["id_key"]))


# Decompressed blobs up to this size go to a reusable per-thread buffer (chunks are at most 8 MiB;
# a larger tree blob gets fresh memory).
DECODE_BUFFER_MAX = 16 * 2**20
_FRAME_HEADER_MOST = 18  # bytes: the longest zstd frame header (``frame_content_size`` reads it)


class Crypter:
    """Seal/open byte strings and compute content ids with one master key; thread-safe."""

    def __init__(self, key: MasterKey, compression_level: int = 3) -> None:
        self.key = key
        self._aead = AESGCM(key.encryption)
        self.compression_level = compression_level
        self._local = threading.local()  # decompression contexts, one per thread
        level = compression_level
        # lent per compression (zstd contexts are not thread-safe): a few at a time, not one per thread
        self._compressors = Lent(lambda: zstandard.ZstdCompressor(level=level))
        self._buffers = ThreadBuffers()
        self._plain = ThreadBuffers(minimum=1 + ONE_SHOT_MAX)  # small: at most one-shot payloads
        self._estimator = CompressionEstimator()

    def with_encryption_key(self, key: bytes) -> Crypter:
        """The same content ids and compression under another AES key (a format 3 pack's data key);
        shares this crypter's per-thread zstd contexts and buffers, so one per pack costs little."""
        other = Crypter(MasterKey(key, self.key.id_key), self.compression_level)
        other._local, other._buffers = self._local, self._buffers
        other._compressors, other._estimator = self._compressors, self._estimator
        return other

    def content_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self.key.id_key).digest()

    def id_hasher(self) -> blake3.blake3:
        """A hasher whose digest is ``content_id`` of what it was given."""
        return blake3.blake3(key=self.key.id_key)

    def content_id_of(self, pieces: Iterable[bytes | bytearray | memoryview]) -> bytes:
        """``content_id`` of the pieces joined, without joining them."""
        hasher = blake3.blake3(key=self.key.id_key)
        for run in _runs(pieces):
            hasher.update(run)
        return hasher.digest()

    def seal(self, plaintext: bytes | bytearray | memoryview, aad: bytes) -> bytes:
        nonce = new_nonce()
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
        sealed = self._check_length(sealed, what)
        try:
            return self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
        except InvalidTag:
            raise self._tampered(what) from None

    @staticmethod
    def _check_length(sealed: bytes | memoryview, what: str) -> memoryview:
        if len(sealed) < NONCE_SIZE + TAG_SIZE:
            raise IntegrityError(f"{what}: truncated ({len(sealed)} bytes)")
        return memoryview(sealed)

    @staticmethod
    def _tampered(what: str) -> IntegrityError:
        return IntegrityError(
            f"{what}: authentication failed (corrupted, tampered with, or written with another key)",
            hint="run `cloudkeep check --read-data` to see which restore points are affected",
        )

    def _payload(self, data: bytes | memoryview, compress: bool) -> tuple[int, bytes | memoryview]:
        """The codec and payload to seal: zstd unless it does not pay (or cannot, by estimate)."""
        if compress and len(data) > 64 and self._estimator.worth_compressing(data):
            compressor = self._compressors.take()
            try:
                if len(data) <= WHOLE_MOST:
                    packed = compressor.compress(data)
                else:
                    packed = b"".join(_in_pieces(compressor, [data], len(data)))
            finally:
                self._compressors.give(compressor)
            if _pays(len(packed), len(data)):
                return CODEC_ZSTD, packed
        return CODEC_RAW, data

    def payload_pieces(
        self, pieces: Sequence[bytes | bytearray | memoryview], size: int
    ) -> tuple[int, list[bytes | memoryview]]:
        """``_payload`` of the pieces joined (``size`` bytes), as pieces: the compressed frame is
        the one a single call makes, and the codec is chosen as there."""
        if size > 64 and self._estimator.worth_compressing_pieces(pieces, size):
            compressor = self._compressors.take()
            try:
                packed = _in_pieces(compressor, pieces, size)
            finally:
                self._compressors.give(compressor)
            if _pays(sum(len(piece) for piece in packed), size):
                return CODEC_ZSTD, packed
        return CODEC_RAW, [memoryview(run) for run in _runs(pieces)]

    def stream_payload(self, pieces: Iterable[bytes]) -> tuple[bytes, int, list[bytes | memoryview]]:
        """The content id, size and zstd payload of the pieces joined, each piece hashed and
        compressed as it is taken (``PayloadStream``), so the pieces need never all exist."""
        stream = PayloadStream(self)
        try:
            for run in _runs(pieces):
                stream.feed(run)
        except BaseException:
            stream.close()
            raise
        return stream.finish()

    def seal_pieces(self, codec: int, payload: Iterable[bytes | memoryview], aad: bytes) -> Iterator[bytes]:
        """The blob ``encode`` seals from the codec and payload, a piece at a time (nonce,
        ciphertexts, tag): GCM is a stream mode, so the pieces joined are that blob."""
        nonce = new_nonce()
        encryptor = Cipher(algorithms.AES(self.key.encryption), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        yield nonce + encryptor.update(bytes((codec,)))
        for piece in payload:
            yield encryptor.update(piece)
        yield encryptor.finalize() + encryptor.tag

    def encode(self, data: bytes | memoryview, aad: bytes, *, compress: bool = True) -> bytes:
        """Compress (unless it does not pay) then seal; the first plaintext byte names the codec.

        Each step's input is let go once the next is made: the compressed payload, the codec and
        payload, the ciphertext and the sealed file had all been held at once (an index file of
        90,000 blobs, ~6 MiB, held ~20 MiB while it was encoded)."""
        codec, payload = self._payload(data, compress)
        plain = bytearray(1 + len(payload))
        plain[0] = codec
        plain[1:] = payload
        del payload
        nonce = new_nonce()
        sealed = self._aead.encrypt(nonce, plain, aad)
        del plain
        return nonce + sealed

    def encode_into_buffer(self, data: bytes | memoryview, aad: bytes) -> memoryview:
        """``encode`` written into this thread's reusable buffer; valid until the thread's next call.

        The backup hot path: sealing ~1 MiB chunks with fresh objects costs three allocations
        and copies per chunk, and with them most of the engine's page faults (kernel time).
        The buffer grows to the largest blob this thread has sealed (at most a maximum chunk).
        """
        codec, payload = self._payload(data, True)
        size = NONCE_SIZE + 1 + len(payload) + TAG_SIZE
        nonce = new_nonce()
        if len(payload) <= ONE_SHOT_MAX:
            plain = self._plain.get("plain", 1 + len(payload))
            plain[0] = codec
            plain[1:] = payload
            view = self._buffers.get("sealing", size)
            view[:NONCE_SIZE] = nonce
            self._aead.encrypt_into(nonce, plain, aad, view[NONCE_SIZE:])
            return view
        view = self._buffers.get("sealing", size + 16)  # update_into wants a block of slack
        view[:NONCE_SIZE] = nonce
        # GCM is a stream mode: two updates give exactly the one-shot AESGCM ciphertext.
        encryptor = Cipher(algorithms.AES(self.key.encryption), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        end = NONCE_SIZE + encryptor.update_into(bytes((codec,)), view[NONCE_SIZE:])
        end += encryptor.update_into(payload, view[end:])
        encryptor.finalize()
        view[end : end + TAG_SIZE] = encryptor.tag
        return view[: end + TAG_SIZE]

    def decode(self, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
        return bytes(self._unpack(memoryview(self.open(sealed, aad, what)), what))

    def decode_into_buffer(self, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes | memoryview:
        """``decode`` through this thread's reusable buffer; valid until the thread's next call.

        For restore and check, which open every blob once and use it at once: decrypting into
        fresh objects costs allocations, copies and page faults per chunk.
        """
        sealed = self._check_length(sealed, what)
        size = len(sealed) - NONCE_SIZE - TAG_SIZE
        plain = self._buffers.get("opening", size)
        try:
            self._aead.decrypt_into(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad, plain)
        except InvalidTag:
            raise self._tampered(what) from None
        return self._unpack(plain, what, into_buffer=True)

    def _unpack(self, plain: memoryview, what: str, *, into_buffer: bool = False) -> bytes | memoryview:
        """The payload behind the codec byte: a view of ``plain`` if raw, else decompressed (into
        this thread's reusable buffer with ``into_buffer``, when the frame states a size that fits)."""
        if not plain:
            raise IntegrityError(f"{what}: empty payload")
        codec, body = plain[0], plain[1:]
        if codec == CODEC_RAW:
            return body
        if codec == CODEC_ZSTD:
            try:
                decompressor = getattr(self._local, "decompressor", None)
                if decompressor is None:
                    decompressor = self._local.decompressor = zstandard.ZstdDecompressor()
                if into_buffer:
                    size = zstandard.frame_content_size(body)  # -1: not stated; 0: nothing to gain
                    if 0 < size <= DECODE_BUFFER_MAX:
                        return self._decompress_into(decompressor, body, size, what)
                return decompressor.decompress(body, allow_extra_data=False)  # one frame, nothing after
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"{what}: cannot decompress ({exc})") from None
        raise IntegrityError(f"{what}: unknown codec {codec}")

    def opened_pieces(self, sealed: bytes | memoryview, aad: bytes, what: str, size: int) -> Iterator[bytes]:
        """``open`` then ``_unpack`` in pieces of about ``size`` bytes, decrypted and decompressed
        as they are taken: a large blob (a tree, which a restore reads twice) is never whole, sealed
        or open. GCM authenticates at the end: ``IntegrityError`` after the last piece if the blob
        is not what this key sealed, so nothing may be acted on before the pieces end. Where the
        payload is damaged, the rest is decrypted to tell a tampered blob (the error ``open``
        gives) from a damaged one. A zstd frame must state its size and hold exactly that, as
        ``decode`` requires (the reader alone gives a cut frame's bytes, or reads on into a second)."""
        stream = _Decrypting(self.key.encryption, self._check_length(sealed, what), aad)
        try:
            codec = stream.read(1)
            if not codec:
                raise IntegrityError(f"{what}: empty payload")
            stated = -1
            if codec[0] == CODEC_RAW:
                read: Callable[[int], bytes] = stream.read
            elif codec[0] == CODEC_ZSTD:  # a context of its own: the thread's decodes blobs between pieces
                stated = zstandard.frame_content_size(stream.peek(_FRAME_HEADER_MOST))
                if stated < 0:
                    raise IntegrityError(f"{what}: cannot decompress (the frame does not state its size)")
                source = cast(IO[bytes], stream)  # it reads only ``read(size)``
                read = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=False).read
            else:
                raise IntegrityError(f"{what}: unknown codec {codec[0]}")
            total = 0
            while piece := read(size):
                total += len(piece)
                yield piece
            if stated >= 0 and total != stated:
                raise IntegrityError(
                    f"{what}: cannot decompress (the frame does not hold the size it states)"
                )
        except (zstandard.ZstdError, IntegrityError) as exc:
            if not stream.authentic():
                raise self._tampered(what) from None
            if isinstance(exc, IntegrityError):
                raise
            raise IntegrityError(f"{what}: cannot decompress ({exc})") from None
        if not stream.authentic():
            raise self._tampered(what)

    def _decompress_into(
        self, decompressor: zstandard.ZstdDecompressor, body: memoryview, size: int, what: str
    ) -> memoryview:
        """One frame of exactly ``size`` bytes into the ``decoded`` buffer.

        A restore decodes most of its bytes this way: fresh ``bytes`` per blob cost an allocation
        each, and those above the mmap threshold (``limit_heap_fragmentation``) were faulted in,
        zeroed and unmapped again, ~1/3 more CPU than the decompression itself. A frame that
        yields more or less than it states is damaged: refused, as ``decompress`` refuses it."""
        out = self._buffers.get("decoded", size)
        reader = decompressor.stream_reader(body, read_across_frames=False, closefd=False)
        if reader.readinto(out) != size or reader.read(1):
            raise IntegrityError(f"{what}: cannot decompress (the frame does not hold the size it states)")
        return out


class _Decrypting:
    """A sealed blob's plaintext read as a file is read, decrypted as it goes (``opened_pieces``;
    zstd's stream reader reads it). GCM is a stream mode: each piece decrypts to as many bytes."""

    def __init__(self, key: bytes, sealed: memoryview, aad: bytes) -> None:
        nonce, tag = bytes(sealed[:NONCE_SIZE]), bytes(sealed[len(sealed) - TAG_SIZE :])
        self._decryptor = Cipher(algorithms.AES(key), modes.GCM(nonce, tag)).decryptor()
        self._decryptor.authenticate_additional_data(aad)
        self._body = sealed[NONCE_SIZE : len(sealed) - TAG_SIZE]
        self._at = 0
        self._ahead = b""  # decrypted by ``peek``, not read yet

    def read(self, size: int = -1) -> bytes:
        ahead, self._ahead = self._ahead, b""
        if ahead and 0 <= size <= len(ahead):
            self._ahead = ahead[size:]
            return ahead[:size]
        end = len(self._body) if size < 0 else min(self._at + size - len(ahead), len(self._body))
        piece = self._decryptor.update(self._body[self._at : end])
        self._at = end
        return ahead + piece if ahead else piece

    def peek(self, size: int) -> bytes:
        """The next ``size`` bytes (fewer at the end), read again by the next ``read``."""
        self._ahead = self.read(size)
        return self._ahead

    def authentic(self) -> bool:
        """Whether the whole blob is what the key sealed (the part not read yet is read now)."""
        while self._at < len(self._body):
            self.read(2**20)
        try:
            self._decryptor.finalize()
        except InvalidTag:
            return False
        return True


class PayloadStream:
    """A blob's zstd payload made as its plaintext comes, a piece at a time (a large folder's
    nodes' texts as the walk makes them, or its parts' as worker processes send them): hashed and
    compressed as fed, only the compressed frame is kept. The size, unknown until the last piece,
    is then written into the frame's header (``_stating_size``), as a single call states it:
    restores decode into a buffer of that size, older readers need it. Holds one of the
    crypter's zstd contexts until ``finish`` or ``close``; one thread at a time."""

    def __init__(self, crypter: Crypter) -> None:
        self._hasher = blake3.blake3(key=crypter.key.id_key)
        self._lender = crypter._compressors
        self._compressor: zstandard.ZstdCompressor | None = self._lender.take()
        self._stream = self._compressor.compressobj()
        self._out: list[bytes | memoryview] = []
        self.size = 0

    def feed(self, piece: bytes | bytearray | memoryview) -> None:
        self._hasher.update(piece)
        self.size += len(piece)
        _compress_into(self._stream, piece, self._out)

    def finish(self) -> tuple[bytes, int, list[bytes | memoryview]]:
        """The content id, the size and the payload; the context goes back."""
        self._out.append(self._stream.flush())
        self.close()
        out, self._out = self._out, []
        return self._hasher.digest(), self.size, _stating_size(out, self.size)

    def close(self) -> None:
        """Give the zstd context back (a blob abandoned part way: the next use resets it)."""
        if self._compressor is not None:
            self._lender.give(self._compressor)
            self._compressor = None


def _in_pieces(
    compressor: zstandard.ZstdCompressor, pieces: Iterable[bytes | bytearray | memoryview], size: int
) -> list[bytes | memoryview]:
    """One zstd frame of the pieces joined (``size`` bytes, stated in the frame as one call
    states it), made ``_PIECE`` at a time."""
    stream = compressor.compressobj(size=size)
    out: list[bytes | memoryview] = []
    for run in _runs(pieces):
        _compress_into(stream, run, out)
    out.append(stream.flush())
    return out


def _compress_into(
    stream: zstandard.ZstdCompressionObj, piece: bytes | bytearray | memoryview, out: list[bytes | memoryview]
) -> None:
    view = memoryview(piece)
    out += filter(None, (stream.compress(view[at : at + _PIECE]) for at in range(0, len(view), _PIECE)))


def _runs(pieces: Iterable[bytes | bytearray | memoryview]) -> Iterator[bytes | bytearray | memoryview]:
    """The pieces with the small ones joined, ``_RUN`` bytes at a time: a tree's pieces are its
    nodes' texts, and a call per node cost more than hashing or compressing it."""
    run: list[bytes | bytearray | memoryview] = []
    held = 0
    for piece in pieces:
        if len(piece) >= _RUN:
            if run:
                yield b"".join(run)
                run, held = [], 0
            yield piece
            continue
        run.append(piece)
        held += len(piece)
        if held >= _RUN:
            yield b"".join(run)
            run, held = [], 0
    if run:
        yield b"".join(run)


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_HEADER_MOST = 18  # magic, descriptor, window, dictionary id (4), content size (8)


def _stating_size(frame: list[bytes | memoryview], size: int) -> list[bytes | memoryview]:
    """A zstd frame made without its size known, in pieces, with ``size`` written into its
    header (an 8-byte content size field, RFC 8878 3.1.1.1): the blocks that follow do not depend
    on it, and a decoder checks what it decodes against it."""
    if len(frame[0]) < _ZSTD_HEADER_MOST:
        frame = [b"".join(frame)]
    first = bytes(frame[0])
    stated = zstandard.get_frame_parameters(first).content_size
    if stated == size:  # all of it came at once (nothing, or a flush): zstd stated it
        return frame
    descriptor = first[4]
    if first[:4] != _ZSTD_MAGIC or stated != zstandard.CONTENTSIZE_UNKNOWN or descriptor & 0x20:
        raise RuntimeError("zstd made a frame header this writer does not expect")
    at = 6 + (0, 1, 2, 4)[descriptor & 3]  # behind the window descriptor and the dictionary id
    head = _ZSTD_MAGIC + bytes((descriptor | 0xC0,)) + first[5:at] + size.to_bytes(8, "little")
    return [head + first[at:], *frame[1:]]


def _pays(packed: int, size: int) -> bool:
    """Compression kept only where it saves 1/32: incompressible data (media, archives) is stored
    raw, which saves CPU on every restore."""
    return packed < size - size // 32


@dataclass(frozen=True)
class KdfParams:
    """scrypt cost. The default (N=2^14, r=8, p=5) is one of OWASP's recommended settings: as much
    CPU as N=2^17 but 16 MiB instead of 128 MiB of RAM, so agents on small VMs stay lean."""

    n: int = 2**14
    r: int = 8
    p: int = 5

    def derive(self, password: str, salt: bytes) -> bytes:
        return Scrypt(salt=salt, length=32, n=self.n, r=self.r, p=self.p).derive(password.encode("utf-8"))


def wrap_master_key(master: MasterKey, password: str, kdf: KdfParams) -> dict[str, object]:
    """A key file body: the master key sealed under a key derived from one password."""
    import json

    salt = secrets.token_bytes(16)
    kek = AESGCM(kdf.derive(password, salt))
    nonce = os.urandom(NONCE_SIZE)
    sealed = kek.encrypt(nonce, json.dumps(master.to_json()).encode(), b"cloudkeep-key-v1")
    return {
        "version": 1,
        "kdf": "scrypt",
        "n": kdf.n,
        "r": kdf.r,
        "p": kdf.p,
        "salt": b64(salt),
        "data": b64(nonce + sealed),
    }


def unwrap_master_key(body: dict[str, object], password: str) -> MasterKey:
    """Raises ``AuthenticationError`` if the password does not open this key file."""
    import json

    if body.get("kdf") != "scrypt":
        raise IntegrityError(f"unsupported key derivation {body.get('kdf')!r}")
    kdf = KdfParams(int(body["n"]), int(body["r"]), int(body["p"]))  # type: ignore[call-overload]
    kek = AESGCM(kdf.derive(password, unb64(str(body["salt"]))))
    data = unb64(str(body["data"]))
    try:
        plain = kek.decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], b"cloudkeep-key-v1")
    except InvalidTag:
        raise AuthenticationError("wrong password for this repository") from None
    return MasterKey.from_json(json.loads(plain))
