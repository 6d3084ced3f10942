"""Every hostile stream of `streams.py`, through the real ``dittohead-receive`` CLI.

Each must be refused with exactly one ``dittohead:`` line naming the problem, no traceback,
nothing left in the inbox (neither a dot entry nor an entry), and nothing written anywhere
else: the whole test root (dropbox, config, neighbours) and an absolute canary folder in /tmp
must be exactly as before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile import recv_harness as h
from tests.hostile import streams

# The same guarantees with every file-system fallback forced (fscaps).
pytestmark = pytest.mark.usefixtures("fs_mode")

# The absolute canary is fixed at collection time (the streams embed it); one per test session.
CANARY = Path(tempfile.gettempdir()) / f"dittohead-canary-{os.getpid()}"
CASES = streams.streams(str(CANARY))


@pytest.fixture(scope="module")
def canary() -> Iterator[Path]:
    CANARY.mkdir(mode=0o777, exist_ok=True)
    yield CANARY
    shutil.rmtree(CANARY)


def test_generator_covers_every_threat_row() -> None:
    rows = {case.row for case in CASES}
    for needed in (
        "command grammar",
        "absolute, .., empty or . component",
        "symlink, hard link, device, FIFO, contiguous, sparse, multi-volume, unknown types",
        "size: 0 <= size <= cap, checked before reading data",
        "NUL",
        "control characters",
        "backslash",
        "non-UTF-8 bytes",
        "path > 1024 bytes",
        "component > 255 bytes",
        "depth > 32",
        "duplicate names",
        "file later used as a directory",
        "collide on Windows",
        "not portable",
        "truncated stream, garbage after a member, bytes other than NUL after end-of-archive",
        "any exception from tarfile",
        "GNU longname applied",
        "ustar prefix applied",
        "pax path applied",
        "global pax headers applied",
        "compression bombs: every cap on the decompressed bytes",
    ):
        assert needed in rows
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_stream_is_refused(case: streams.Hostile, tmp_path: Path, canary: Path) -> None:
    server = h.make_server(tmp_path)
    (tmp_path / "canary").mkdir()
    before = h.snapshot(tmp_path)
    result = h.run(server, case.stream, case.command)
    h.assert_refused(result, case.expect)
    assert server.entries() == []
    assert server.entries(streams.CLOSED_STUDY) == []
    assert h.snapshot(tmp_path) == before
    assert list(canary.iterdir()) == []
