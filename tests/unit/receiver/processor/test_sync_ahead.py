"""The background syncfs that gives the processor's final syncfs a head start."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from dittohead.receiver import fsops
from dittohead.receiver.processor import finalize as processor
from dittohead.receiver.processor.finalize import run_once
from tests.support.invariants import ledger_of, tree_files
from tests.support.server import STUDY, make_server


def test_background_syncfs_runs_and_finish_waits_for_it(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ahead = fsops.SyncAhead(fd)
        ahead.start()
        ahead.start()  # while one runs, no second: either way finish() waits for all
        ahead.finish()
        assert not any(t.name == "dittohead-syncfs" for t in threading.enumerate())
        ahead.finish()  # nothing started: nothing to wait for
    finally:
        os.close(fd)


def test_an_error_in_the_background_reaches_finish(tmp_path: Path) -> None:
    # A real failing syncfs: on an fd that is no longer open (EBADF). A writeback error (EIO)
    # cannot be produced on demand here; it takes the same path.
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    os.close(fd)
    ahead = fsops.SyncAhead(fd)
    ahead.start()
    with pytest.raises(OSError) as caught:
        ahead.finish()
    assert caught.value.errno == errno.EBADF
    ahead.finish()  # reported once, then cleared


def test_the_processor_with_a_background_syncfs_after_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = 0
    real_start = fsops.SyncAhead.start

    def counting_start(self: fsops.SyncAhead) -> None:
        nonlocal started
        started += 1
        real_start(self)

    monkeypatch.setattr(processor, "_SYNC_AHEAD_FILES", 1)
    monkeypatch.setattr(fsops.SyncAhead, "start", counting_start)
    server = make_server(tmp_path)
    files = {f"run{i // 10}/trial{i:03d}.txt": f"trial {i}".encode() for i in range(40)}
    name = server.commit(files)
    summary = run_once(server.config)
    assert started == 40
    assert summary.entries == 1 and summary.stored == 40
    assert tree_files(server.destination) == files
    assert {r["path"] for r in ledger_of(server.destination)} == set(files)
    assert (server.config.study_dir(STUDY) / "done" / name).is_dir()
    assert not any(t.name == "dittohead-syncfs" for t in threading.enumerate())
