"""`unzstd.inflate` in-process: the output is handed on in bounded pieces and stops at the first
byte past the declared size, however far the frame would expand."""

from __future__ import annotations

import pytest
import zstandard

from dittohead.core.errors import UploadRejected
from dittohead.receiver.upload import unzstd


def test_a_bomb_stops_at_the_declared_size_in_bounded_pieces() -> None:
    frame = zstandard.ZstdCompressor(level=3).compress(bytes(256 << 20))  # 256 MiB -> ~8 KiB
    assert len(frame) < 16 * 1024
    pieces: list[int] = []
    with pytest.raises(UploadRejected, match="decompresses to more than the 3000000 bytes"):
        unzstd.inflate([memoryview(frame)], 3_000_000, "b.bin", lambda p: pieces.append(len(p)))
    assert max(pieces) <= unzstd.OUT_BYTES
    assert sum(pieces) <= 3_000_000  # nothing past the declared size reached the file


def test_exact_output_in_pieces_whatever_the_input_chunks() -> None:
    data = b"".join(b"line %d\n" % i for i in range(400_000))
    frame = zstandard.ZstdCompressor(level=3).compress(data)
    chunks = [memoryview(frame[i : i + 1000]) for i in range(0, len(frame), 1000)]
    out = bytearray()
    unzstd.inflate(chunks, len(data), "log.txt", out.extend)
    assert out == data


def test_a_frame_needing_a_larger_window_is_refused() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=27, write_content_size=0)
    obj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    frame = obj.compress(b"x" * 1000) + obj.flush()
    with pytest.raises(UploadRejected, match="not valid zstd data"):
        unzstd.inflate([memoryview(frame)], 1000, "w.bin", lambda p: None)
