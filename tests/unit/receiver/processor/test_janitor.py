"""The janitor moves abandoned staging entries aside, unread, and nothing else."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dittohead.core.errors import ConfigError
from dittohead.receiver import fsops
from dittohead.receiver.config.model import parse_config
from dittohead.receiver.dropbox import STALE
from dittohead.receiver.processor.finalize import run_once
from dittohead.receiver.processor.janitor import sweep
from tests.support.server import STUDY, Server, make_server

# The same guarantees with every file-system fallback forced (fscaps).
pytestmark = pytest.mark.usefixtures("fs_mode")

DAY = 86400.0


def run_sweep(server: Server, stale_after: float, now_ns: int) -> list[str]:
    study_fd = os.open(server.config.study_dir(STUDY), fsops.DIR_FLAGS)
    inbox_fd = os.open("inbox", fsops.DIR_FLAGS, dir_fd=study_fd)
    try:
        return sweep(study_fd, inbox_fd, stale_after, now_ns)
    finally:
        os.close(inbox_fd)
        os.close(study_fd)


def staging(server: Server, files: dict[str, bytes]) -> str:
    name = "." + server.entry_name()
    for rel, data in files.items():
        path = server.inbox / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return name


def test_an_abandoned_staging_entry_is_moved_aside_whole(server: Server) -> None:
    name = staging(server, {"eprime/s01.txt": b"partial"})
    moved = run_sweep(server, DAY, time.time_ns() + int((DAY + 1) * 1e9))
    assert moved == [name]
    stale = server.config.study_dir(STUDY) / STALE
    assert (stale / name / "eprime" / "s01.txt").read_bytes() == b"partial"
    assert not (server.inbox / name).exists()


def test_a_live_upload_is_left_alone_even_when_only_a_deep_file_changes(server: Server) -> None:
    name = staging(server, {"a/b/c/data.bin": b"x"})
    started = time.time_ns()
    time.sleep(0.3)
    with (server.inbox / name / "a/b/c/data.bin").open("ab") as fh:
        fh.write(b"more")  # the receiver is still writing, deep inside
    changed = time.time_ns()
    # Judged by the top folder alone it would look idle for 0.3 s; it changed 0.1 s ago.
    assert run_sweep(server, 0.2, changed + int(0.1e9)) == []
    assert (server.inbox / name).is_dir()
    assert run_sweep(server, 0.2, started + int(10e9)) == [name]


def test_committed_entries_symlinks_and_strangers_are_not_touched(server: Server) -> None:
    committed = server.commit({"a.txt": b"a"})
    target = server.base / "elsewhere"
    target.mkdir()
    link = "." + server.entry_name()
    os.symlink(target, server.inbox / link)
    (server.inbox / ".not-an-entry").mkdir()
    assert run_sweep(server, DAY, time.time_ns() + int((DAY + 1) * 1e9)) == []
    assert sorted(os.listdir(server.inbox)) == sorted([committed, link, ".not-an-entry"])
    assert list(target.iterdir()) == []


def test_stale_after_must_exceed_the_receivers_stall_timeout(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stale_after must be more than twice stall_timeout"):
        parse_config(
            {"dropbox": "/srv/x", "limits": {"stall_timeout": 600, "stale_after": 900}}, "t.yaml"
        )


def test_every_processor_pass_runs_the_janitor(tmp_path: Path) -> None:
    server = make_server(tmp_path, stall_timeout=0.01, stale_after=0.05)
    abandoned = staging(server, {"x.bin": b"half"})
    good = server.commit({"ok.txt": b"fine"})
    time.sleep(0.2)
    summary = run_once(server.config)
    assert (summary.stale, summary.entries) == (1, 1)
    study = server.config.study_dir(STUDY)
    assert (study / STALE / abandoned / "x.bin").read_bytes() == b"half"
    assert (study / "done" / good).is_dir()
