"""``StreamCutter`` refills one small buffer, grown for a file whose chunk fills it: its chunks must
be exactly FastCDC's over the whole file in one piece, whatever the file's size against the buffer
(the repository content depends on it: other chunks would store every file anew)."""

from __future__ import annotations

import io
import random

import pytest

from cloudkeep.repo.chunker import KEEP_LARGE_FILES, ChunkerParams, StreamCutter


def _file(size: int, zero_run: int) -> bytes:
    rng = random.Random(size)
    data = bytearray(rng.randbytes(size))
    zeros = slice(size // 3, size // 3 + zero_run)  # a run of zeros: cut at the maximum size
    data[zeros] = bytes(len(data[zeros]))
    return bytes(data)


@pytest.mark.parametrize("max_size", [4096, 16_384])  # the buffer is a maximum chunk / a quarter of one
@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 40_000, 100_003])
def test_stream_chunks_are_the_whole_files_chunks(size: int, max_size: int) -> None:
    params = ChunkerParams(avg_size=1024, min_size=256, max_size=max_size, seed=0)
    data = _file(size, 3 * max_size)
    whole = [bytes(c.data) for c in params.make().cut_buf(data)] if data else []
    cutter = StreamCutter(params)
    streamed = [bytes(c) for c in cutter.cut(io.BytesIO(data))]
    assert streamed == whole
    assert b"".join(streamed) == data


def test_the_buffer_grows_for_a_long_chunk_and_is_small_again_once_files_stop_needing_it() -> None:
    params = ChunkerParams(avg_size=1024, min_size=256, max_size=16_384, seed=0)
    cutter = StreamCutter(params)
    assert len(cutter.buffer) == 4096  # four average chunks

    def cut(data: bytes) -> list[bytes]:
        chunks = [bytes(c) for c in cutter.cut(io.BytesIO(data))]
        assert chunks == [bytes(c.data) for c in params.make().cut_buf(data)]
        return chunks

    random_only, with_zeros = _file(60_000, 0), _file(60_000, 40_000)
    cut(random_only)
    assert len(cutter.buffer) == 4096  # no chunk filled it
    assert max(map(len, cut(with_zeros))) == params.max_size
    assert len(cutter.buffer) == params.max_size
    large = cutter.buffer
    for _ in range(KEEP_LARGE_FILES - 1):  # kept while files may need it again: no fresh buffer per file
        cut(random_only)
    cut(with_zeros)  # needed again: the same buffer, kept for as many files more
    assert cutter.buffer is large
    for _ in range(KEEP_LARGE_FILES):
        cut(random_only)
    assert cutter.buffer is large
    cut(random_only)
    assert len(cutter.buffer) == 4096
    assert max(map(len, cut(with_zeros))) == params.max_size  # and grows again when needed
