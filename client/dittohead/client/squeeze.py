"""Squeeze: which files of an upload travel zstd-compressed, and at what level.

Compression pays where the network is slower than the compressor: over a campus link a lab's
E-Prime logs (UTF-16 text), edat files and int16 signals shrink 2-5x, and every byte saved is
link time saved. Where the link is as fast as the CPU (loopback, the server on the same
machine) it only costs: the client then does not ask for it at all (`wanted`). Within an
upload that asked, each candidate file is judged from a cheap sample (`Squeeze.pays`): the
first `SAMPLE_BYTES` compressed at the fastest level; data that does not shrink (video, the
eyetracker's packed floats, anything already compressed) goes raw and costs that sample only.

`zstandard` is imported only when an upload carries a candidate file: a send of small files,
or one to a loopback server, never loads it (tests/unit/client/test_import_boundary.py).
The wire format is in docs/protocol.md, "Compression"; the figures behind the numbers here
in docs/performance.md, "Over shaped links".
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import zstandard

#: the environment variable that overrides `wanted`: "1" always asks, "0" never
ENV = "DITTOHEAD_COMPRESS"
#: files smaller than this go raw: per-file frames of small files gain little and cost a call
#: each (a folder of 50,000 small files must stay as fast as before)
MIN_BYTES = 128 * 1024
#: files larger than this go raw: a compressed member's size is in its header, so the whole
#: frame is built in memory before it is sent (bounded by this)
MAX_BYTES = 32 * 1024 * 1024
#: the sample judged per file, from its start
SAMPLE_BYTES = 64 * 1024
#: the sample must shrink to this fraction (at level 1) for the file to be compressed
SAMPLE_RATIO = 0.85
#: a whole file is sent compressed only if it shrank to this fraction (else raw after all)
FILE_RATIO = 0.95
#: the level files are compressed at. On the link benchmark's lab mix (docs/performance.md):
#: level 1 sends 54.0 MiB of 96.4 at ~620 MB/s of one core, level 3 48.1 MiB at ~230 MB/s;
#: at 100 Mbit/s the smaller stream wins by ~0.5 s, and at 1 Gbit/s (~115 MB/s) level 3 still
#: keeps up with the link. It is also the level of the `tar | zstd -3` peer.
LEVEL = 3

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def wanted(host: str) -> bool:
    """Whether an upload to `host` should ask for compression: not on loopback (the link is
    faster than the compressor there), unless `ENV` says otherwise."""
    forced = os.environ.get(ENV)
    if forced in ("0", "1"):
        return forced == "1"
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(name).is_loopback
    except ValueError:
        return True  # a host name: a network is in between


class Squeeze:
    """The compressors of one upload (created at its first candidate file)."""

    def __init__(self, level: int = LEVEL) -> None:
        import zstandard  # only for an upload with a candidate file (see the docstring)

        self._sampler = zstandard.ZstdCompressor(level=1)
        # The frame carries its decompressed size and a checksum (the receiver checks the size
        # against the pax record and the sha256 against the manifest; the frame checksum is
        # zstd's own, for a clear error on corrupted frames).
        self._files = zstandard.ZstdCompressor(level=level, write_checksum=True)

    def pays(self, sample: memoryview) -> bool:
        """Whether the file that starts with `sample` is worth compressing."""
        if not sample:
            return False
        return len(self._sampler.compress(sample)) <= SAMPLE_RATIO * len(sample)

    def compressor(self, size: int) -> zstandard.ZstdCompressionObj:
        """A compressor for one file of `size` bytes (written into the frame's header)."""
        return self._files.compressobj(size=size)


def candidate(size: int) -> bool:
    """Whether a file of `size` bytes may be sent compressed at all."""
    return MIN_BYTES <= size <= MAX_BYTES
