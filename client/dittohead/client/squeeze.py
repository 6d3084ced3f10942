"""Squeeze: which files of an upload travel zstd-compressed, and at what level.

Compression pays where the network is slower than the compressor: over a campus link a lab's
E-Prime logs (UTF-16 text), edat files and int16 signals shrink 2-5x, and every byte saved is
link time saved. Where the link is as fast as the CPU (loopback, the server on the same
machine) it only costs: the client then does not ask for it at all (`wanted`). Within an
upload that asked, each candidate file is judged from a cheap sample (`Squeeze.pays`): the
first `SAMPLE_BYTES` compressed at the fastest level; data that does not shrink (video, the
eyetracker's packed floats, anything already compressed) goes raw and costs that sample only.
The level paces itself (`Squeeze.pace`): harder while the send mostly waits for the link,
faster while compressing is what it spends its time on, so the compressor never becomes the
bottleneck of a fast link.

`zstandard` is imported only when an upload carries a candidate file: a send of small files,
or one to a loopback server, never loads it (tests/unit/client/test_import_boundary.py).
The wire format is in docs/protocol.md, "Compression"; the figures behind the numbers here
in docs/performance.md, "Over shaped links".
"""

from __future__ import annotations

import ipaddress
import os
import time
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
#: the levels a send moves between (`Squeeze.pace`), and the one it starts at. On the link
#: benchmark's lab mix of 96.4 MiB (docs/performance.md), one core: level 1 sends 54.0 MiB at
#: ~620 MB/s, 3 48.2 MiB at ~250 MB/s, 5 45.6 MiB at ~130 MB/s, 7 44.8 MiB at ~90 MB/s
#: (9: 44.5 MiB at 48 MB/s, no longer worth it). Level 3 is also the `tar | zstd -3` peer's.
LEVELS = (1, 3, 5, 7)
START = 1  # index into LEVELS
#: `pace` judges the share of the send's time spent compressing over at least this long
PACE_SECONDS = 0.25
#: below this share the link is what the send waits for: compress harder; above `BUSY`, the
#: compressor is what the link waits for: compress faster
IDLE, BUSY = 0.30, 0.60

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

    def __init__(self) -> None:
        import zstandard  # only for an upload with a candidate file (see the docstring)

        self._zstd = zstandard
        self._sampler = zstandard.ZstdCompressor(level=1)
        self._files: dict[int, zstandard.ZstdCompressor] = {}
        self.rung = START
        self._busy = 0.0  # seconds spent compressing since `_since`
        self._since = time.perf_counter()

    @property
    def level(self) -> int:
        return LEVELS[self.rung]

    def pace(self, busy: float, now: float | None = None) -> None:
        """Count `busy` seconds of compressing; move the level when the share of the time
        spent compressing says the link (compress harder) or the compressor (compress
        faster) is what the send waits for. The rest of the time the client waits for ssh to
        take the stream, which on a slow link is most of it."""
        now = time.perf_counter() if now is None else now
        self._busy += busy
        wall = now - self._since
        if wall < PACE_SECONDS:
            return
        share = self._busy / wall
        if share < IDLE and self.rung < len(LEVELS) - 1:
            self.rung += 1
        elif share > BUSY and self.rung > 0:
            self.rung -= 1
        self._busy, self._since = 0.0, now

    def pays(self, sample: memoryview) -> bool:
        """Whether the file that starts with `sample` is worth compressing."""
        if not sample:
            return False
        return len(self._sampler.compress(sample)) <= SAMPLE_RATIO * len(sample)

    def compressor(self, size: int) -> zstandard.ZstdCompressionObj:
        """A compressor at the current level for one file of `size` bytes (written into the
        frame's header, with a checksum: the receiver checks the size against the pax record
        and the sha256 against the manifest; the checksum gives a clear error on a corrupted
        frame)."""
        level = self.level
        files = self._files.get(level)
        if files is None:
            files = self._files[level] = self._zstd.ZstdCompressor(level=level, write_checksum=True)
        return files.compressobj(size=size)


def candidate(size: int) -> bool:
    """Whether a file of `size` bytes may be sent compressed at all."""
    return MIN_BYTES <= size <= MAX_BYTES
