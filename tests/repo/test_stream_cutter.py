"""``StreamCutter`` refills one maximum-chunk buffer: its chunks must be exactly FastCDC's over the
whole file in one piece, whatever the file's size against the buffer (the repository content
depends on it: other chunks would store every file anew)."""

from __future__ import annotations

import io
import random

import pytest

from cloudkeep.repo.chunker import ChunkerParams, StreamCutter


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 40_000, 100_003])
def test_stream_chunks_are_the_whole_files_chunks(size: int) -> None:
    params = ChunkerParams(avg_size=1024, min_size=256, max_size=4096, seed=0)
    rng = random.Random(size)
    data = bytearray(rng.randbytes(size))
    zeros = slice(size // 3, size // 3 + 3 * 4096)  # a run of zeros: cut at the maximum size
    data[zeros] = bytes(len(data[zeros]))
    whole = [bytes(c.data) for c in params.make().cut_buf(bytes(data))] if data else []
    cutter = StreamCutter(params)
    streamed = [bytes(c) for c in cutter.cut(io.BytesIO(bytes(data)))]
    assert streamed == whole
    assert b"".join(streamed) == bytes(data)
    assert len(cutter.buffer) == params.max_size
