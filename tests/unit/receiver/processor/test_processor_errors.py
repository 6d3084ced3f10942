"""A pass that fails while publishing: what it queued is written only once the tree is durable.

The failure is injected (a RuntimeError from the n-th publish_file, standing in for any bug or
unexpected error); syncfs is wrapped to watch its order against the ledger's writes, and in one
test made to fail (EIO cannot be produced on demand here).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dittohead.receiver import fscaps, fsops
from dittohead.receiver.admin.init_cmd import init
from dittohead.receiver.config.model import load_config
from dittohead.receiver.processor import publish
from dittohead.receiver.processor.finalize import StudiesFailed, run_once
from dittohead.receiver.processor.ledger import Ledger
from tests.support.invariants import ledger_of, tree_problems
from tests.support.server import STUDY, Server, make_server

# Two uploads' worth of folders that exist already in the tree after the first: the second
# upload's files are published one by one (no folder moves whole), so a failure comes mid-way.
FIRST = {f"s{i}/a.txt": b"first" for i in range(4)}
SECOND = {f"s{i}/b.txt": f"second {i}".encode() for i in range(4)}


def _fail_at(monkeypatch: pytest.MonkeyPatch, nth: int, events: list[str]) -> None:
    real = publish.publish_file
    calls = 0

    def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == nth:
            events.append("boom")
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr("dittohead.receiver.processor.finalize.publish_file", failing)


def _watch_writes(
    monkeypatch: pytest.MonkeyPatch, events: list[str], *, syncfs_fails: bool
) -> None:
    real_syncfs = fsops.syncfs

    def syncfs(fd: int) -> None:
        events.append("syncfs")
        if syncfs_fails and "boom" in events:  # the disk fails after the injected error
            raise OSError(errno.EIO, "Input/output error")
        real_syncfs(fd)

    monkeypatch.setattr(fsops, "syncfs", syncfs)
    _watch_ledger_writes(monkeypatch, events)


def _watch_ledger_writes(monkeypatch: pytest.MonkeyPatch, events: list[str]) -> None:
    """Note ``ledger write`` in `events` whenever the ledger writes queued records."""
    real_flush = Ledger.flush

    def flush(self: Ledger) -> None:
        if self.queued_bytes:
            events.append("ledger write")
        real_flush(self)

    monkeypatch.setattr(Ledger, "flush", flush)


def _fail_mid_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, syncfs_fails: bool
) -> tuple[Server, str, list[str]]:
    """A pass whose third publish_file raises: (server, the failed upload, events seen)."""
    server = make_server(tmp_path)
    server.commit(FIRST)
    run_once(server.config)
    second = server.commit(SECOND)
    events: list[str] = []
    _fail_at(monkeypatch, 3, events)
    _watch_writes(monkeypatch, events, syncfs_fails=syncfs_fails)
    with pytest.raises(StudiesFailed):  # the pass goes on; the study is named at the end
        run_once(server.config)
    monkeypatch.undo()
    return server, second, events


def test_records_queued_before_a_failure_are_written_after_the_tree_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, second, events = _fail_mid_publish(tmp_path, monkeypatch, syncfs_fails=False)
    assert events[events.index("boom") + 1 :] == ["syncfs", "ledger write"]
    assert [r["path"] for r in ledger_of(server.destination) if r["upload"] == second] == [
        "s0/b.txt",
        "s1/b.txt",
    ]
    run_once(server.config)  # the next run finishes the entry
    assert tree_problems(server.destination) == []
    assert len([r for r in ledger_of(server.destination) if r["upload"] == second]) == 4


def test_when_the_tree_cannot_be_synced_the_queued_records_wait_for_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, second, events = _fail_mid_publish(tmp_path, monkeypatch, syncfs_fails=True)
    assert "ledger write" not in events[events.index("boom") :]
    assert [r for r in ledger_of(server.destination) if r["upload"] == second] == []
    run_once(server.config)  # finds the two published files by inode, publishes the rest
    assert tree_problems(server.destination) == []
    records = [r for r in ledger_of(server.destination) if r["upload"] == second]
    assert sorted(r["stored_as"] for r in records) == [f"s{i}/b.txt" for i in range(4)]


def test_an_unexpected_error_in_one_study_gives_one_line_and_the_others_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(tmp_path)
    doc = yaml.safe_load(server.config_path.read_text())
    (tmp_path / "first").mkdir()
    # "first" comes before the server's own study, so its failure comes first in the pass.
    doc["studies"] = {
        "first": {**doc["studies"][STUDY], "destination": str(tmp_path / "first" / "raw")},
        **doc["studies"],
    }
    server.config_path.write_text(yaml.safe_dump(doc))
    config = load_config(server.config_path)
    init(config)
    bad = Server(server.base, server.config_path, config)
    inbox = config.study_dir("first") / "inbox"
    bad_name = bad.commit({"x.txt": b"meets a bug"})
    (config.study_dir(STUDY) / "inbox" / bad_name).rename(inbox / bad_name)
    good = bad.commit({"a.txt": b"still flows"})
    _fail_at(monkeypatch, 1, [])
    with pytest.raises(StudiesFailed, match=r"\(first\)") as caught:
        run_once(config)
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line.startswith(f"first: unexpected error while finalizing {bad_name} (RuntimeError")
    assert "the other studies carry on" in line
    assert caught.value.summary.finalized == [good]
    assert (config.study_dir(STUDY) / "done" / good).is_dir()
    # The entry keeps its journal: the next pass finishes it as after a crash.
    assert (config.study_dir("first") / "processing" / bad_name).is_dir()
    monkeypatch.undo()
    assert run_once(config).finalized == [bad_name]
    assert (tmp_path / "first" / "raw" / "x.txt").read_bytes() == b"meets a bug"
    assert tree_problems(tmp_path / "first" / "raw") == []


def _fail_mid_publish_with_fallbacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, sync_fails: bool
) -> tuple[Server, str, list[str]]:
    """As `_fail_mid_publish`, every file-system fallback forced: no syncfs then, but a fsync
    of each folder written (`fscaps.sync_written`, watched here as ``sync:<folders>``)."""
    server = make_server(tmp_path)
    server.commit(FIRST)
    run_once(server.config)
    second = server.commit(SECOND)
    events: list[str] = []
    _fail_at(monkeypatch, 3, events)
    real_sync = fscaps.sync_written

    def sync_written(fd: int, written: Any) -> None:
        written = list(written)
        events.append(f"sync:{len(written)}")
        if sync_fails and "boom" in events:
            raise OSError(errno.EIO, "Input/output error")
        real_sync(fd, written)

    monkeypatch.setattr(fscaps, "sync_written", sync_written)
    _watch_ledger_writes(monkeypatch, events)
    with pytest.raises(StudiesFailed):
        run_once(server.config)
    monkeypatch.undo()
    return server, second, events


@pytest.fixture
def fallbacks() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv(fscaps.FORCE_ENV, "1")
        fscaps.forget()
        yield
    fscaps.forget()


def test_with_the_fallbacks_the_folders_written_are_synced_before_the_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fallbacks: None
) -> None:
    server, second, events = _fail_mid_publish_with_fallbacks(
        tmp_path, monkeypatch, sync_fails=False
    )
    after = events[events.index("boom") + 1 :]
    assert after[-1] == "ledger write"
    # the folders the failed publish wrote into (the tree's, staging's), before they closed
    assert after[0].startswith("sync:") and int(after[0].split(":")[1]) >= 2, after
    assert len([r for r in ledger_of(server.destination) if r["upload"] == second]) == 2
    run_once(server.config)
    assert tree_problems(server.destination) == []
    assert len([r for r in ledger_of(server.destination) if r["upload"] == second]) == 4


def test_with_the_fallbacks_folders_that_cannot_be_synced_keep_the_records_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fallbacks: None
) -> None:
    server, second, events = _fail_mid_publish_with_fallbacks(
        tmp_path, monkeypatch, sync_fails=True
    )
    assert "ledger write" not in events[events.index("boom") :]
    assert [r for r in ledger_of(server.destination) if r["upload"] == second] == []
    run_once(server.config)  # finds the two published files by inode, publishes the rest
    assert tree_problems(server.destination) == []
    records = [r for r in ledger_of(server.destination) if r["upload"] == second]
    assert sorted(r["stored_as"] for r in records) == [f"s{i}/b.txt" for i in range(4)]
