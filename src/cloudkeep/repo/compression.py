"""Whether a blob is worth compressing, judged cheaply before paying for zstd on all of it.

zstd at the repository's level is most of a first backup's CPU, and compressing data that does
not compress (gzipped man pages, archives, media) costs it too, only for the blob to be stored
raw afterwards. Two cheap tests skip that work:

- a small blob (a whole small file, or a file's short last chunk) that starts with the signature
  of a compressed format (gzip, xz, zstd, bzip2, lz4, 7-Zip) is stored raw: on a real /usr the
  gzipped man pages are 6 % of the bytes and each costs zstd's fixed setup for nothing;
- a large blob is judged from evenly spaced slices (8 of 4 KiB, about 3 % of a 1 MiB chunk)
  compressed together at zstd's fastest level; if even those do not shrink, it is stored raw.

Everything else still goes through the repository's level and the final check in
``crypto.Crypter`` (stored raw unless zstd saves 1/32), so an estimate only ever skips work where
it finds nothing to gain: the repository size stays what full compression gives, but for a chunk
whose samples mislead (a compressible stretch between incompressible slices).

Content ids hash the raw bytes, so the choice never changes a blob's id: dedup is unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence

import zstandard

from cloudkeep.repo.memory import Lent

# Below this a blob is judged by its signature alone: sampling would cost about what compressing does.
SAMPLE_FROM = 64 * 1024
SAMPLE_SIZE = 4 * 1024
SAMPLES = 8
# Samples that keep more than this share of their size hold nothing worth compressing: the
# writer stores a blob raw unless zstd saves at least 1/32 of it, and slices of compressible
# data shrink far more than that even at level 1.
INCOMPRESSIBLE = 0.97
# Formats whose content is already compressed (at least three bytes each, so that a chance
# match at the start of an ordinary chunk is one in millions, and costs only that chunk's ratio).
COMPRESSED_SIGNATURES = (
    b"\x1f\x8b\x08",  # gzip (deflate)
    b"\x28\xb5\x2f\xfd",  # zstd frame
    b"\xfd7zXZ\x00",  # xz
    b"BZh",  # bzip2
    b"\x04\x22\x4d\x18",  # lz4 frame
    b"7z\xbc\xaf\x27\x1c",  # 7-Zip
)  # not PNG or JPEG: zstd still saves a few per cent on some (measured on /usr/share/doc)
_SIGNATURE_BYTES = max(len(s) for s in COMPRESSED_SIGNATURES)


def compressed_signature(data: bytes | memoryview) -> bool:
    """``data`` starts like a file of an already-compressed format."""
    return bytes(data[:_SIGNATURE_BYTES]).startswith(COMPRESSED_SIGNATURES)


class CompressionEstimator:
    """Decides per blob whether full compression can pay; thread-safe (its zstd contexts are lent)."""

    def __init__(self) -> None:
        # lent per estimate, as the crypter lends its contexts (``memory.Lent``)
        self._samplers = Lent(lambda: zstandard.ZstdCompressor(level=1, write_content_size=False))

    def worth_compressing(self, data: bytes | memoryview) -> bool:
        """False when ``data`` is a small compressed file, or its samples do not shrink at zstd level 1."""
        size = len(data)
        if size < SAMPLE_FROM:
            return not compressed_signature(data)
        return self.worth_compressing_pieces([data], size)

    def worth_compressing_pieces(self, pieces: Sequence[bytes | bytearray | memoryview], size: int) -> bool:
        """``worth_compressing`` of the pieces joined (``size`` bytes), sampled where it samples."""
        if size < SAMPLE_FROM:
            return self.worth_compressing(b"".join(pieces))
        step = (size - SAMPLE_SIZE) // (SAMPLES - 1)
        starts = [i * step for i in range(SAMPLES)]  # disjoint: step > SAMPLE_SIZE
        sample = bytearray()
        at = first = 0  # where the piece starts in the whole; the first sample not yet taken whole
        for piece in pieces:  # (a tree's pieces are its nodes: tens of thousands)
            end = at + len(piece)
            i = first
            while i < SAMPLES and starts[i] < end:  # the samples that reach into this piece
                start = starts[i]
                if start + SAMPLE_SIZE > at:
                    sample += memoryview(piece)[max(start - at, 0) : start + SAMPLE_SIZE - at]
                if start + SAMPLE_SIZE <= end:
                    first = i + 1
                i += 1
            at = end
        sampler = self._samplers.take()
        try:
            return len(sampler.compress(sample)) < len(sample) * INCOMPRESSIBLE
        finally:
            self._samplers.give(sampler)
