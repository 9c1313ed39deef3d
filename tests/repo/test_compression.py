"""Compression chosen per blob from a cheap estimate (issue 18): incompressible data is stored raw
without paying for zstd, compressible data is compressed, and blob ids (hence dedup) never
depend on the choice. Pack writes batch small blobs: the pack must stay byte-exact."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
from pathlib import Path

import blake3
import pytest
import zstandard

from cloudkeep.repo import Repository, backup_files, cat_file
from cloudkeep.repo.browse import lookup
from cloudkeep.repo.chunker import StreamCutter
from cloudkeep.repo.compression import SAMPLE_FROM, CompressionEstimator
from cloudkeep.repo.crypto import CODEC_RAW, CODEC_ZSTD, OVERHEAD, Crypter, MasterKey
from cloudkeep.repo.memory import Lent
from cloudkeep.repo.pack import (
    DATA,
    TREE,
    WRITE_BATCH,
    BlobEntry,
    PackWriter,
    blob_aad,
    header_text,
    pack_id_of,
    read_header,
)

RNG = random.Random(18)
TEXT = b"".join(b"line %d: cloudkeep backs up cloud machines\n" % i for i in range(40_000))
RANDOM = RNG.randbytes(1_500_000)
GZIPPED_SMALL = gzip.compress(TEXT[:20_000])  # a gzipped man page: small, already compressed
# Media-like: random bytes behind a few bytes of header, so no signature gives it away.
MEDIA = b"RIFF" + RNG.randbytes(700_000)


class NoFullCompression:
    """Stands in for the repository-level zstd context: any call means the estimate was ignored."""

    def compress(self, data: bytes) -> bytes:
        raise AssertionError("full compression was attempted")


@pytest.fixture
def crypter() -> Crypter:
    return Crypter(MasterKey.generate())


@pytest.mark.parametrize(
    ("data", "worth"),
    [
        (TEXT, True),
        (TEXT[:3000], True),
        (RANDOM, False),
        (MEDIA, False),
        (GZIPPED_SMALL, False),
        (zstandard.ZstdCompressor().compress(TEXT[:30_000]), False),
        (RANDOM[:3000], True),  # small, no signature: zstd decides (and the writer stores it raw)
    ],
    ids=["text", "small-text", "random", "media", "gzip", "zstd", "small-random"],
)
def test_estimate(data: bytes, worth: bool) -> None:
    assert CompressionEstimator().worth_compressing(data) is worth


def test_mixed_chunk_with_compressible_samples_is_compressed() -> None:
    """Half text, half random, interleaved in 64 KiB stretches: the samples see the text."""
    mixed = b"".join(TEXT[i : i + 65536] + RANDOM[i : i + 65536] for i in range(0, 1_000_000, 131072))
    assert len(mixed) > SAMPLE_FROM
    assert CompressionEstimator().worth_compressing(mixed)


@pytest.mark.parametrize("data", [RANDOM, MEDIA, GZIPPED_SMALL], ids=["random", "media", "gzip"])
def test_incompressible_blobs_are_stored_raw_without_full_compression(crypter: Crypter, data: bytes) -> None:
    crypter._compressors = Lent(NoFullCompression)  # type: ignore[arg-type]  # any context it lends
    sealed = bytes(crypter.encode_into_buffer(data, b"aad"))
    assert len(sealed) == len(data) + OVERHEAD
    assert crypter.open(sealed, b"aad", "blob")[0] == CODEC_RAW
    assert crypter.decode(sealed, b"aad", "blob") == data


@pytest.mark.parametrize("data", [TEXT, TEXT[:3000]], ids=["large", "small"])
def test_compressible_blobs_are_compressed(crypter: Crypter, data: bytes) -> None:
    sealed = bytes(crypter.encode_into_buffer(data, b"aad"))
    assert len(sealed) < len(data) // 4
    assert crypter.open(sealed, b"aad", "blob")[0] == CODEC_ZSTD
    assert crypter.decode(sealed, b"aad", "blob") == data


def _chunk_ids(repo: Repository, data: bytes) -> list[bytes]:
    cutter = StreamCutter(repo.config.chunker)
    return [repo.crypter.content_id(bytes(c)) for c in cutter.cut(io.BytesIO(data))]


def test_backup_stores_by_estimate_and_ids_do_not_depend_on_it(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files = {"notes.txt": TEXT, "photo.raw": MEDIA, "man.1.gz": GZIPPED_SMALL, "small.txt": TEXT[:5000]}
    for name, data in files.items():
        (src / name).write_bytes(data)
    snap = backup_files(repo, [src], hostname="h")
    for name, data in files.items():
        node = lookup(repo, snap.id, str(src / name))
        assert node.content == _chunk_ids(repo, data), name  # ids hash the raw bytes
        out = io.BytesIO()
        cat_file(repo, snap.id, str(src / name), out)
        assert out.getvalue() == data, name
        raw = [repo.locate(i).entry for i in node.content]
        stored_raw = [e.length == e.raw_length + OVERHEAD for e in raw]
        assert all(stored_raw) if name in ("photo.raw", "man.1.gz") else not any(stored_raw), name
    # A copy elsewhere deduplicates completely, whatever each blob's codec.
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in files.items():
        (copy / name).write_bytes(data)
    again = backup_files(repo, [copy], hostname="h")
    assert again.stats["bytes_new"] < 65536  # the new folders' tree blobs, none of the 2.2 MB of files


def test_batched_pack_is_byte_exact(crypter: Crypter, tmp_path: Path) -> None:
    """Small blobs batched, large ones written straight through, in any order: offsets, header
    and pack id are those of the bytes as written."""
    sizes = [100, 5000, WRITE_BATCH // 2, 30, WRITE_BATCH - 10, 7, WRITE_BATCH * 3, 60_000, 1]
    sizes += [RNG.randint(1, 9000) for _ in range(300)]
    pack = PackWriter(DATA, str(tmp_path))
    blobs = []
    for n, size in enumerate(sizes):
        blob_id = n.to_bytes(32, "big")
        data = RNG.randbytes(size)
        pack.add(blob_id, crypter.encode(data, blob_aad(DATA, blob_id), compress=False), size)
        blobs.append(data)
    pack_id, path, entries = pack.finish(crypter)
    body = Path(path).read_bytes()
    assert pack_id == pack_id_of(body) == blake3.blake3(body).hexdigest()
    assert read_header(crypter, pack_id, body, len(body)) == entries
    for entry, data in zip(entries, blobs, strict=True):
        sealed = body[entry.offset : entry.offset + entry.length]
        assert crypter.decode(sealed, blob_aad(DATA, entry.id), "blob") == data
    os.unlink(path)


@pytest.mark.parametrize("count", [0, 1, 2, 1000])
def test_a_pack_header_is_the_json_of_its_rows(count: int) -> None:
    """The header written into one buffer is byte for byte ``json.dumps`` of its rows, as every
    reader (and packs written before it) has it."""
    entries = [
        BlobEntry(
            RNG.choice([DATA, TREE]),
            RNG.randbytes(32),
            RNG.randint(0, 2**40),
            RNG.randint(1, 2**24),
            RNG.randint(0, 2**33),
        )
        for _ in range(count)
    ]
    rows = [[e.type, e.id.hex(), e.offset, e.length, e.raw_length] for e in entries]
    assert header_text(entries) == json.dumps(rows).encode()
    assert json.loads(header_text(entries)) == rows


@pytest.mark.parametrize("noise_where", ["samples", "between"])
@pytest.mark.parametrize("cut", [37, 4096, 5000, 70_001, 10**9], ids=["37", "4096", "5000", "70001", "whole"])
def test_the_estimate_of_pieces_samples_where_the_joined_blob_is_sampled(noise_where: str, cut: int) -> None:
    """A tree stored in pieces (its nodes' texts) is judged from the very slices the joined blob
    would be: noise exactly where the samples fall (or exactly elsewhere) decides it."""
    from cloudkeep.repo.compression import SAMPLE_SIZE, SAMPLES

    step = 40_000
    size = (SAMPLES - 1) * step + SAMPLE_SIZE
    noisy_samples = noise_where == "samples"
    made = bytearray(size) if noisy_samples else bytearray(RNG.randbytes(size))
    for i in range(SAMPLES):
        made[i * step : i * step + SAMPLE_SIZE] = (
            RNG.randbytes(SAMPLE_SIZE) if noisy_samples else bytes(SAMPLE_SIZE)
        )
    data = bytes(made)
    pieces = [data[at : at + cut] for at in range(0, size, cut)]
    estimator = CompressionEstimator()
    assert estimator.worth_compressing(data) is not noisy_samples
    assert estimator.worth_compressing_pieces(pieces, size) is not noisy_samples
