"""A full destination, and a file system that refuses RENAME_NOREPLACE.

Out of space: nothing half-published, the entry waits in processing/ with its journal, the
reason is logged, and the next run (once there is room) finishes it exactly once.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dittohead.receiver import fsops
from dittohead.receiver.dropbox import claims_dir
from dittohead.receiver.processor.finalize import run_once
from dittohead.receiver.processor.journal import Journal
from dittohead.receiver.processor.publish import _move_noreplace
from tests.support.invariants import (
    ledger_of,
    tree_files,
    tree_problems,
)
from tests.support.server import STUDY, Server
from tests.unit.receiver.conftest import is_staging

# -- out of space ---------------------------------------------------------------------------


@pytest.fixture
def small_destination(server: Server) -> Iterator[Path]:
    """The study's destination on its own 1 MiB tmpfs: a really full disk, really ENOSPC."""
    dest = server.destination
    st = dest.stat()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=2750", "tmpfs", str(dest)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    os.chown(dest, st.st_uid, st.st_gid)
    try:
        yield dest
    finally:
        subprocess.run(["umount", "-l", str(dest)], check=False)


@pytest.mark.root
def test_a_full_disk_while_copying_defers_the_entry_until_there_is_room(
    server: Server, small_destination: Path, caplog: pytest.LogCaptureFixture
) -> None:
    big = os.urandom(3 << 20)  # larger than the whole file system
    first = server.commit({"small.txt": b"fits"})
    name = server.commit({"big.bin": big, "note.txt": b"with it"})
    after = server.commit({"later.txt": b"committed after the big one"})
    with caplog.at_level(logging.ERROR):
        summary = run_once(server.config)
    assert summary.deferred == 1
    assert any("out of space" in m and name in m for m in caplog.messages)
    # Nothing of the big entry is in the tree; it waits in processing/ with its journal.
    assert tree_files(small_destination) == {"small.txt": b"fits"}
    assert (server.config.study_dir(STUDY) / "processing" / name).is_dir()
    assert Journal(claims_dir(server.config.dropbox, STUDY)).read(name) is not None
    assert (server.inbox / after).is_dir()  # the pass stopped rather than jump the queue
    assert [r["upload"] for r in ledger_of(small_destination)] == [first]
    assert not any((small_destination / ".dittohead" / "staging").iterdir())
    # Still full: deferred again, nothing changes.
    assert run_once(server.config).deferred == 1
    assert tree_files(small_destination) == {"small.txt": b"fits"}
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_destination)], check=True)
    summary = run_once(server.config)
    assert summary.deferred == 0 and summary.entries == 2
    assert tree_files(small_destination) == {
        "small.txt": b"fits",
        "big.bin": big,
        "note.txt": b"with it",
        "later.txt": b"committed after the big one",
    }
    sent = {"small.txt": {b"fits"}, "big.bin": {big}, "note.txt": {b"with it"}}
    assert server.problems(sent) == []


def disk_full_at(
    monkeypatch: pytest.MonkeyPatch, nth: int, which: Callable[[str], bool]
) -> list[str]:
    """Make the `nth` rename out of staging whose source `which` picks fail with ENOSPC (from
    then on the disk is "full" for those); returns the sources tried, in order."""
    real = fsops.renameat2
    tried: list[str] = []

    def full(src_dir: int, src: str, dst_dir: int, dst: str, *, noreplace: bool = True) -> None:
        if is_staging(src_dir) and which(src):
            tried.append(src)
            if len(tried) >= nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)
        real(src_dir, src, dst_dir, dst, noreplace=noreplace)

    monkeypatch.setattr(fsops, "renameat2", full)
    return tried


@pytest.mark.root
def test_a_full_disk_while_publishing_keeps_the_rest_for_the_next_run(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """ENOSPC from the third rename into the tree (a new directory block, a quota), file by
    file: ``d`` is already in the tree, so its files go one by one into it."""
    files = {f"d/f{i}.txt": b"file %d" % i for i in range(5)}
    (server.destination / "d").mkdir()
    name = server.commit(files)
    later = server.commit({"later.txt": b"later"})
    disk_full_at(monkeypatch, 3, lambda src: src.startswith("d/"))  # the files, not "d" itself
    with caplog.at_level(logging.ERROR):
        summary = run_once(server.config)
    assert summary.deferred == 1
    assert any("out of space" in m for m in caplog.messages)
    # What was published is whole and recorded; the rest waits, staged, with the journal.
    assert tree_files(server.destination) == {"d/f0.txt": b"file 0", "d/f1.txt": b"file 1"}
    assert tree_problems(server.destination) == []
    item = Journal(claims_dir(server.config.dropbox, STUDY)).read(name)
    assert item is not None and item.step == "staged"
    assert (server.config.study_dir(STUDY) / "processing" / name).is_dir()
    assert (server.inbox / later).is_dir()
    monkeypatch.undo()  # the disk has room again
    run_once(server.config)
    sent = {p: {d} for p, d in files.items()} | {"later.txt": {b"later"}}
    assert tree_files(server.destination) == {p: next(iter(d)) for p, d in sent.items()}
    assert server.problems(sent) == []


@pytest.mark.root
def test_a_full_disk_while_moving_folders_whole_records_what_moved(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """ENOSPC from the second folder moved whole: the first is in the tree and recorded, the
    rest waits, staged, for the next run, which finishes it exactly once."""
    files = {"a/x.txt": b"x", "a/sub/y.txt": b"y", "b/z.txt": b"z", "c/w.txt": b"w", "t": b"t"}
    name = server.commit(files)
    moves = disk_full_at(monkeypatch, 2, lambda src: True)
    with caplog.at_level(logging.ERROR):
        summary = run_once(server.config)
    assert summary.deferred == 1
    assert moves == ["a", "b"]
    assert tree_files(server.destination) == {"a/x.txt": b"x", "a/sub/y.txt": b"y"}
    assert tree_problems(server.destination) == []  # what moved is recorded
    assert {r["stored_as"] for r in ledger_of(server.destination)} == {"a/x.txt", "a/sub/y.txt"}
    item = Journal(claims_dir(server.config.dropbox, STUDY)).read(name)
    assert item is not None and item.step == "staged"
    monkeypatch.undo()  # the disk has room again
    run_once(server.config)
    assert tree_files(server.destination) == files
    assert server.problems({p: {d} for p, d in files.items()}) == []


@pytest.mark.root
def test_a_full_disk_after_folders_moved_whole_still_records_them(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC from a file published by itself that comes before a moved folder's files in the
    upload: the moved folder's files are recorded all the same."""
    files = {"top.txt": b"t", "a/x.txt": b"x", "a/b/y.txt": b"y"}
    name = server.commit(files)
    disk_full_at(monkeypatch, 1, lambda src: src == "top.txt")
    assert run_once(server.config).deferred == 1
    assert tree_files(server.destination) == {"a/x.txt": b"x", "a/b/y.txt": b"y"}
    assert tree_problems(server.destination) == []
    assert Journal(claims_dir(server.config.dropbox, STUDY)).read(name) is not None
    monkeypatch.undo()  # the disk has room again
    run_once(server.config)
    assert tree_files(server.destination) == files
    assert server.problems({p: {d} for p, d in files.items()}) == []


@pytest.mark.root
def test_a_full_disk_while_writing_the_ledger_leaves_no_torn_line(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = server.commit({"a.txt": b"a", "b.txt": b"b"})
    real_write = os.write
    calls: list[Any] = []

    def short_then_full(fd: int, data: Any) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/ledger.jsonl"):
            calls.append(fd)
            if len(calls) == 1:
                return real_write(fd, bytes(data)[:7])  # part of a line, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", short_then_full)
    summary = run_once(server.config)
    monkeypatch.setattr(os, "write", real_write)
    assert summary.deferred == 1
    ledger_file = server.destination / ".dittohead" / "ledger.jsonl"
    assert ledger_file.read_bytes() == b""  # the partial line was cut off again
    assert Journal(claims_dir(server.config.dropbox, STUDY)).read(name) is not None
    run_once(server.config)
    sent = {"a.txt": {b"a"}, "b.txt": {b"b"}}
    assert server.problems(sent) == []
    assert len(ledger_of(server.destination)) == 2


# -- the link() fallback where RENAME_NOREPLACE is refused -------------------------------------


@pytest.fixture
def no_renameat2_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """renameat2(RENAME_NOREPLACE) answers EINVAL, as NFS and CephFS do.

    A mock stands in for NFS, which cannot be mounted on this machine (no NFS server or kernel
    client in the test container); only renames out of the processor's staging folder are
    refused, the dropbox's own moves (claim, done/) keep working.
    """
    real = fsops.renameat2

    def refused(src_dir: int, src: str, dst_dir: int, dst: str, *, noreplace: bool = True) -> None:
        if noreplace and is_staging(src_dir):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), dst)
        real(src_dir, src, dst_dir, dst, noreplace=noreplace)

    monkeypatch.setattr(fsops, "renameat2", refused)


def test_fallback_moves_to_a_free_name(tmp_path: Path, no_renameat2_flag: None) -> None:
    (tmp_path / "staging").mkdir()
    (tmp_path / "tree").mkdir()
    (tmp_path / "staging" / "00000000").write_bytes(b"new")
    src = os.open(tmp_path / "staging", os.O_RDONLY | os.O_DIRECTORY)
    dst = os.open(tmp_path / "tree", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _move_noreplace(src, "00000000", dst, "x.txt") is True
    finally:
        os.close(src)
        os.close(dst)
    assert (tmp_path / "tree" / "x.txt").read_bytes() == b"new"
    assert (tmp_path / "tree" / "x.txt").stat().st_nlink == 1  # the staged name is gone
    assert not (tmp_path / "staging" / "00000000").exists()


@pytest.mark.parametrize("obstacle", ["file", "dir", "dangling-symlink", "symlink-to-file"])
def test_fallback_never_replaces_what_is_there(
    tmp_path: Path, no_renameat2_flag: None, obstacle: str
) -> None:
    staging, tree = tmp_path / "staging", tmp_path / "tree"
    staging.mkdir()
    tree.mkdir()
    (staging / "00000000").write_bytes(b"new")
    (tmp_path / "victim").write_bytes(b"victim")
    target = tree / "x.txt"
    if obstacle == "file":
        target.write_bytes(b"old")
    elif obstacle == "dir":
        target.mkdir()
    elif obstacle == "dangling-symlink":
        target.symlink_to(tmp_path / "nowhere")
    else:
        target.symlink_to(tmp_path / "victim")
    src = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    dst = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _move_noreplace(src, "00000000", dst, "x.txt") is False
    finally:
        os.close(src)
        os.close(dst)
    assert (staging / "00000000").read_bytes() == b"new"  # still staged, for the next name
    assert (tmp_path / "victim").read_bytes() == b"victim"
    assert not (tmp_path / "nowhere").exists()
    if obstacle == "file":
        assert target.read_bytes() == b"old"
    elif obstacle == "dir":
        assert target.is_dir() and not any(target.iterdir())
    else:
        assert target.is_symlink()


def test_fallback_end_to_end_keeps_every_version(server: Server, no_renameat2_flag: None) -> None:
    dest = server.destination
    os.symlink("/etc/passwd", dest / "data.txt")
    server.commit({"data.txt": b"one", "f.txt": b"v1"})
    run_once(server.config)
    server.commit({"data.txt": b"two", "f.txt": b"v2"})
    run_once(server.config)
    server.commit({"f.txt": b"v1"})
    run_once(server.config)
    assert os.readlink(dest / "data.txt") == "/etc/passwd"
    assert tree_files(dest) == {
        "data~2.txt": b"one",
        "data~3.txt": b"two",
        "f.txt": b"v1",
        "f~2.txt": b"v2",
    }
    sent = {"data.txt": {b"one", b"two"}, "f.txt": {b"v1", b"v2"}}
    assert server.problems(sent) == []
    assert all(os.stat(dest / name).st_nlink == 1 for name in tree_files(dest))


def test_fallback_publishes_new_folders_file_by_file(
    server: Server, no_renameat2_flag: None
) -> None:
    """Folders cannot be linked: where RENAME_NOREPLACE is refused, a new folder is made in
    the tree and its files are linked in one by one, empty folders included."""
    files = {"a/b/c.txt": b"c", "a/d.txt": b"d", "e/f.txt": b"f", "g.txt": b"g"}
    name = server.commit(files)
    (server.inbox / name / "a" / "empty").mkdir()
    run_once(server.config)
    dest = server.destination
    assert tree_files(dest) == files
    assert (dest / "a" / "empty").is_dir()
    assert all(os.stat(dest / p).st_nlink == 1 for p in files)
    assert server.problems({p: {d} for p, d in files.items()}) == []
