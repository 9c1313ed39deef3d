"""``StreamCutter`` refills one small buffer, grown for a file whose chunk fills it: its chunks must
be exactly FastCDC's over the whole file in one piece, whatever the file's size against the buffer
(the repository content depends on it: other chunks would store every file anew)."""

from __future__ import annotations

import io
import random

import pytest

from cloudkeep.repo.chunker import ChunkerParams, StreamCutter


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


def test_the_buffer_grows_for_a_long_chunk_and_is_small_again_for_the_next_file() -> None:
    params = ChunkerParams(avg_size=1024, min_size=256, max_size=16_384, seed=0)
    cutter = StreamCutter(params)
    assert len(cutter.buffer) == 4096  # four average chunks
    random_only = _file(60_000, 0)
    assert [bytes(c) for c in cutter.cut(io.BytesIO(random_only))] == [
        bytes(c.data) for c in params.make().cut_buf(random_only)
    ]
    assert len(cutter.buffer) == 4096  # no chunk filled it
    with_zeros = _file(60_000, 40_000)
    chunks = [bytes(c) for c in cutter.cut(io.BytesIO(with_zeros))]
    assert max(map(len, chunks)) == params.max_size
    assert len(cutter.buffer) == params.max_size
    assert [bytes(c) for c in cutter.cut(io.BytesIO(random_only))] == [
        bytes(c.data) for c in params.make().cut_buf(random_only)
    ]
    assert len(cutter.buffer) == 4096
