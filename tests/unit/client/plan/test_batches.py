"""Batches: how a send is cut, and that each batch is its own confirmed, remembered upload."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dittohead.client import cli
from dittohead.client.plan.batches import Limits, split
from dittohead.client.plan.scan import FileItem
from dittohead.client.progress import Meter, describe
from dittohead.core.errors import UsageError
from tests.unit.client import test_deliver

# The send fixtures of test_deliver: a folder, and the argv sending it to the in-process server.
argv = test_deliver.argv
folder = test_deliver.folder


def items(sizes: list[int]) -> list[FileItem]:
    return [FileItem(f"f{i:05d}", size, 0) for i, size in enumerate(sizes)]


@given(
    st.lists(st.integers(0, 5000), max_size=60),
    st.integers(1, 4000),
    st.integers(1, 7),
)
def test_split_keeps_order_and_limits(sizes: list[int], max_bytes: int, max_files: int) -> None:
    files = items(sizes)
    batches = split(files, Limits(max_bytes, max_files))
    assert [f for b in batches for f in b] == files  # every file once, in order
    for batch in batches:
        assert 1 <= len(batch) <= max_files
        total = sum(f.size for f in batch)
        # over the byte limit only as a single file larger than a batch
        assert total <= max_bytes or len(batch) == 1
    for a, b in itertools.pairwise(batches):
        # a batch ends only when the next file would not fit
        assert len(a) == max_files or sum(f.size for f in a) + b[0].size > max_bytes


def test_defaults() -> None:
    assert Limits() == Limits(1 << 30, 10_000)
    assert Limits.from_options(None, None, "3") == Limits(1 << 30, 3)
    assert Limits.from_options(None, None, "3,100") == Limits(100, 3)
    assert Limits.from_options(5, None, "3,100") == Limits(100, 5)
    for bad in ("0", "x", "1,2,3", "-1"):
        with pytest.raises(UsageError, match="DITTOHEAD_BATCH"):
            Limits.from_options(None, None, bad)


def test_meter_rate_and_time_left() -> None:
    now = [0.0]
    meter = Meter(1000, 10, 2, clock=lambda: now[0])
    assert meter.read(0).rate is None
    now[0] = 1.0
    r = meter.read(100)
    assert r.rate == pytest.approx(100.0) and r.seconds_left == pytest.approx(9.0)
    meter.next_batch(500)
    now[0] = 2.0
    r = meter.read(100)  # 100 bytes into the second batch = 600 of the send
    assert (r.bytes_done, r.batch) == (600, 2)
    assert "left" in describe(r) and "part 2 of 2" in describe(r)


def test_a_send_in_batches_records_each_and_resumes(
    key_server: Any,
    argv: list[str],
    folder: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = [*argv[:-1], "--json", "--batch-files", "1", argv[-1]]
    # The second upload's receipt never comes: the first batch stays confirmed.
    from dittohead.client import deliver

    real = deliver.run
    calls = []

    def flaky(job: Any, **kw: Any) -> Any:
        calls.append(job.selected.files)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job, **kw)

    monkeypatch.setattr(deliver, "run", flaky)
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "1 of 3 parts (1 files) were stored and confirmed" in err and err.count("\n") == 1
    monkeypatch.setattr(deliver, "run", real)
    assert cli.main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["files"] == 2 and len(doc["uploads"]) == 2  # only the two unconfirmed files
    # Three complete uploads, one file each (the second batch's ssh, started ahead and then
    # abandoned, delivered no complete stream).
    complete = [u for u in key_server.uploads if not u.problems]
    assert sorted(len(u.files) for u in complete) == [1, 1, 1]


def test_progress_json_lines_on_stderr(
    key_server: Any, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*argv[:-1], "--json", "--progress=json", argv[-1]]) == 0
    out, err = capsys.readouterr()
    json.loads(out)
    lines = [json.loads(line)["progress"] for line in err.splitlines()]
    assert lines and lines[-1]["bytes_done"] == lines[-1]["bytes_total"]
    assert set(lines[-1]) == {
        "bytes_done", "bytes_total", "files_total", "batch", "batches", "rate",
        "seconds_left", "elapsed",
    }  # fmt: skip
