"""Progress: bytes sent, rate and time left, for a terminal line or a machine-readable stream.

A `Meter` turns "this many file bytes read so far" into a `Reading` (bytes done and total, the
rate over the last few seconds, the time left at that rate). Two displays show readings:
`TerminalLine` (one self-overwriting line on a terminal, a few updates a second) and
`JsonLines` (``--progress=json``: one JSON object per line, for the window and for scripts;
docs/collectors/README.md lists the keys). Both go to stderr: stdout is the result's alone
(with ``--json`` exactly one object).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TextIO

#: the rate is measured over roughly this many seconds (long enough to smooth a stall out,
#: short enough to follow a link that changed speed)
RATE_WINDOW = 10.0
#: at most this many updates a second on a display
UPDATES_PER_SECOND = 5


@dataclass(frozen=True, slots=True)
class Reading:
    """One look at the send (what `JsonLines` prints, key for key)."""

    bytes_done: int
    bytes_total: int
    files_total: int
    batch: int  # 1-based number of the batch being sent
    batches: int
    rate: float | None  # bytes per second; None until it can be told
    seconds_left: float | None  # at that rate; None until it can be told
    elapsed: float


class Meter:
    """Bytes over time for a whole send (all its batches)."""

    def __init__(
        self,
        bytes_total: int,
        files_total: int,
        batches: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bytes_total = bytes_total
        self.files_total = files_total
        self.batches = batches
        self.batch = 1
        self.clock = clock
        self.started = clock()
        self.offset = 0  # bytes of the batches streamed before the current one
        self.samples: deque[tuple[float, int]] = deque([(self.started, 0)])

    def next_batch(self, streamed_bytes: int) -> None:
        """The current batch's stream is complete; `streamed_bytes` of the send are streamed.

        Bytes count once they are streamed (the next batch streams while the server confirms
        this one: `batches`); only the last batch's confirmation makes the send 100%
        (`describe`, `TerminalLine.confirmed`)."""
        self.offset = streamed_bytes
        self.batch += 1

    def read(self, batch_done: int) -> Reading:
        now = self.clock()
        done = self.offset + batch_done
        samples = self.samples
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()
        t0, d0 = samples[0]
        span = now - t0
        rate = (done - d0) / span if span >= 0.5 and done > d0 else None
        left = (self.bytes_total - done) / rate if rate else None
        return Reading(
            bytes_done=done,
            bytes_total=self.bytes_total,
            files_total=self.files_total,
            batch=min(self.batch, self.batches),
            batches=self.batches,
            rate=rate,
            seconds_left=left,
            elapsed=now - self.started,
        )


def human_bytes(n: float) -> str:
    """``1536`` → ``1.5 KiB``."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """``75`` → ``1 min 15 s``; ``4000`` → ``1 h 7 min``."""
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def describe(reading: Reading) -> str:
    """The terminal line's text. It never says 100% before the server has confirmed: once the
    last byte is out, the server is still checking it (`TerminalLine.confirmed` says 100%)."""
    total = reading.bytes_total
    if reading.bytes_done >= total:
        return f"sent {human_bytes(total)}; waiting for the server to confirm"
    percent = min(100 * reading.bytes_done // total, 99)
    text = f"sending: {percent:3d}%  {human_bytes(reading.bytes_done)} of {human_bytes(total)}"
    if reading.rate is not None:
        text += f"  {human_bytes(reading.rate)}/s"
    if reading.seconds_left is not None:
        text += f"  {human_duration(reading.seconds_left)} left"
    if reading.batches > 1:
        text += f"  (part {reading.batch} of {reading.batches})"
    return text


class _Display:
    """What both displays share: a stream, and at most a few updates a second (the last
    reading of a batch always shows)."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self.last = -1.0

    def due(self, reading: Reading) -> bool:
        now = self.clock()
        final = reading.bytes_done >= reading.bytes_total
        if now - self.last < 1 / UPDATES_PER_SECOND and not final:
            return False
        self.last = now
        return True


class TerminalLine(_Display):
    """A self-overwriting progress line on a terminal. `confirmed` shows 100% and ends the line
    once the server has confirmed; `clear` erases it, so that a refusal (or any error) is
    printed on a line of its own."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(stream, clock)
        self.width = 0  # of the text on the line now (0: nothing shown)
        self.total = 0

    def show(self, reading: Reading) -> None:
        if not self.due(reading):
            return
        self.total = reading.bytes_total
        self._write(describe(reading))

    def _write(self, text: str) -> None:
        # Pad over a longer previous line (the rate's digits vary).
        self.stream.write("\r" + text.ljust(self.width))
        self.width = len(text)
        self.stream.flush()

    def confirmed(self) -> None:
        if self.width:
            total = human_bytes(self.total)
            self._write(f"sending: 100%  {total} of {total}, confirmed")
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0

    def clear(self) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


class JsonLines(_Display):
    """``--progress=json``: one JSON object per line, ``{"progress": {...Reading...}}``."""

    def show(self, reading: Reading) -> None:
        if not self.due(reading):
            return
        doc = asdict(reading)
        for key in ("rate", "seconds_left", "elapsed"):
            if doc[key] is not None:
                doc[key] = round(doc[key], 3)
        self.stream.write(json.dumps({"progress": doc}, sort_keys=True) + "\n")
        self.stream.flush()

    def confirmed(self) -> None:
        pass  # the result (--json) or the error says the rest

    def clear(self) -> None:
        pass
