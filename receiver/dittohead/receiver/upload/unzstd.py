"""Decompress one compressed member (pax ``DITTOHEAD.zstd``) with bounded memory and output.

Only an upload that asked for compression (the `` zstd`` flag of the command) reaches this
module, and only at its first compressed member: `zstandard` is imported here, so an upload
without one starts as fast as ever (tests/unit/test_startup_modules.py).

A compression bomb gets nowhere: `stage` has already checked the size the member declares
(``DITTOHEAD.zstd``) against every cap before a byte is read; here the output is handed on in
pieces of at most `OUT_BYTES` as zstd produces them, and the first byte past the declared size
stops the upload. Whatever a frame's own header claims is not trusted. The decoder's window is
capped (`MAX_WINDOW_BYTES`), so a frame cannot make it allocate more than that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from dittohead.core.errors import UploadRejected
from dittohead.receiver.upload.tarread import ZSTD_KEY, malformed

#: the largest decoding window accepted: 8 MiB (the client's levels use 2 MiB at most; zstd's
#: own default limit is 128 MiB)
MAX_WINDOW_BYTES = 8 * 1024 * 1024
#: decompressed bytes handed on per piece
OUT_BYTES = 1024 * 1024


class _Bounded:
    """The writer zstd's stream writer writes into: counts, refuses past `limit`, hands on."""

    __slots__ = ("consume", "done", "limit", "name")

    def __init__(self, limit: int, name: str, consume: Callable[[memoryview], None]) -> None:
        self.limit, self.name, self.consume = limit, name, consume
        self.done = 0

    def write(self, data: bytes) -> int:
        self.done += len(data)
        if self.done > self.limit:
            raise _expands(self.name, self.limit)
        self.consume(memoryview(data))
        return len(data)


def _expands(name: str, limit: int) -> UploadRejected:
    return malformed(f"{name!r} decompresses to more than the {limit} bytes its {ZSTD_KEY} says")


def inflate(
    chunks: Iterable[memoryview], raw_size: int, name: str, consume: Callable[[memoryview], None]
) -> None:
    """Decompress member `name`'s data (`chunks`, zstd frames) into `consume`, which sees
    exactly `raw_size` bytes in pieces or the upload is refused."""
    import zstandard  # only for an upload with a compressed member (see the module's docstring)

    sink = _Bounded(raw_size, name, consume)
    decoder = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES)
    # `_Bounded` has the one method the writer calls (write), not all of IO[bytes].
    writer = decoder.stream_writer(sink, write_size=OUT_BYTES, closefd=False)  # type: ignore[arg-type]
    try:
        for chunk in chunks:
            writer.write(chunk)
        writer.flush()  # type: ignore[no-untyped-call]  # zstandard's stub leaves it untyped
    except zstandard.ZstdError as exc:
        raise malformed(f"{name!r} is not valid zstd data ({exc})") from None
    if sink.done != raw_size:
        raise malformed(
            f"{name!r} decompresses to {sink.done} bytes, not the {raw_size} its {ZSTD_KEY} says"
        )
