"""Folders new to the tree arrive whole: one ``renameat2(RENAME_NOREPLACE)`` per folder.

What must hold: the tree, the ledger, modes, owners and groups are exactly what publishing file
by file gives (compared against the processor with folder moves turned off); nothing is ever
moved onto anything; a duplicate is never written; a replay after a kill at any instant ends as
if nothing had happened; and the optimisation has not silently stopped working (the renames out
of staging are counted, and a moved folder keeps its staged inode).
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import signal
import stat
from pathlib import Path
from typing import Any

import pytest

from dittohead.receiver import fsops
from dittohead.receiver.admin.history_cmd import verify
from dittohead.receiver.dropbox import claims_dir
from dittohead.receiver.processor import finalize as processor
from dittohead.receiver.processor.finalize import Hooks, Stopped, run_once
from dittohead.receiver.processor.journal import Journal
from dittohead.receiver.processor.ledger import read_ledger
from dittohead.receiver.processor.publish import MovedFolders, TreeDirs, move_new_folders
from dittohead.receiver.processor.verify import StagedFile
from tests.support.invariants import (
    ledger_of,
    sent_problems,
    tree_files,
    tree_problems,
)
from tests.support.server import STUDY, Server, make_server
from tests.unit.receiver.conftest import is_staging
from tests.unit.receiver.processor.test_processor_faults import run_processor


class Renames:
    """Renames out of the staging folder: (staged path, stored name, inode moved), all tried
    in `tried`, those that succeeded in `calls`."""

    def __init__(self) -> None:
        self.tried: list[tuple[str, str, int]] = []
        self.calls: list[tuple[str, str, int]] = []

    def clear(self) -> None:
        self.tried.clear()
        self.calls.clear()


@pytest.fixture
def renames(monkeypatch: pytest.MonkeyPatch) -> Renames:
    seen = Renames()
    real = fsops.renameat2

    def counted(src_dir: int, src: str, dst_dir: int, dst: str, *, noreplace: bool = True) -> None:
        if is_staging(src_dir):
            ino = os.stat(src, dir_fd=src_dir, follow_symlinks=False).st_ino
            seen.tried.append((src, dst, ino))
            real(src_dir, src, dst_dir, dst, noreplace=noreplace)
            seen.calls.append((src, dst, ino))
        else:
            real(src_dir, src, dst_dir, dst, noreplace=noreplace)

    monkeypatch.setattr(fsops, "renameat2", counted)
    return seen


def lab_files(
    subjects: int = 2, sessions: int = 2, tasks: int = 2, per: int = 3
) -> dict[str, bytes]:
    """A small subject / session / task tree, plus files at the top level."""
    files = {
        f"sub{a}/ses{b}/task{c}/trial{i}.txt": b"%d %d %d %d" % (a, b, c, i)
        for a in range(subjects)
        for b in range(sessions)
        for c in range(tasks)
        for i in range(per)
    }
    files["participants.tsv"] = b"id\n"
    files["README"] = b"read me"
    return files


def add_empty_folder(server: Server, entry: str, rel: str) -> None:
    """An empty folder in a committed entry (the manifest lists files only)."""
    (server.inbox / entry / rel).mkdir(parents=True)


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """(mode with type bits, uid, gid) of everything in the tree but the ledger's folder."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel == ".dittohead" or rel.startswith(".dittohead/"):
            continue
        st = path.lstat()
        out[rel] = (st.st_mode, st.st_uid, st.st_gid)
    return out


def fixity(server: Server) -> tuple[list[str], int]:
    """``dittohead-admin verify``'s check: the tree re-hashed against the ledger."""
    fd = os.open(server.destination, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return verify(fd, read_ledger(fd))
    finally:
        os.close(fd)


def sent_of(*uploads: dict[str, bytes]) -> dict[str, set[bytes]]:
    sent: dict[str, set[bytes]] = {}
    for files in uploads:
        for path, data in files.items():
            sent.setdefault(path, set()).add(data)
    return sent


# -- a new upload into an empty destination ---------------------------------------------------


def test_new_folders_arrive_whole_with_one_rename_each(server: Server, renames: Renames) -> None:
    files = lab_files()
    name = server.commit(files)
    add_empty_folder(server, name, "sub0/ses1/notes")
    add_empty_folder(server, name, "empty/deeper")
    summary = run_once(server.config)
    assert (summary.stored, summary.duplicates) == (len(files), 0)
    # One rename per top-level folder and per top-level file, nothing else.
    assert sorted(src for src, _, _ in renames.calls) == [
        "README",
        "empty",
        "participants.tsv",
        "sub0",
        "sub1",
    ]
    dest = server.destination
    for src, dst, ino in renames.calls:
        assert dst == src
        assert (dest / dst).lstat().st_ino == ino  # the staged folder itself, not a copy
    assert tree_files(dest) == files
    assert (dest / "sub0/ses1/notes").is_dir() and not any((dest / "sub0/ses1/notes").iterdir())
    assert (dest / "empty/deeper").is_dir()
    records = ledger_of(dest)
    assert {r["path"]: r["stored_as"] for r in records} == {p: p for p in files}
    assert all(r["outcome"] == "stored" and r["upload"] == name for r in records)
    assert server.problems(sent_of(files)) == []
    assert fixity(server) == ([], len(files))


def other_group() -> int:
    mine = os.getgid()
    for group in grp.getgrall():
        if group.gr_gid != mine:
            return group.gr_gid
    pytest.skip("no second group on this system")


@pytest.mark.root
def test_moved_folders_have_the_modes_and_group_publishing_file_by_file_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same upload twice: once with folders moved whole, once file by file (the moves
    turned off); every folder and file has the same mode (setgid included), owner and group."""
    gid = other_group()
    files = lab_files(per=1)
    trees = {}
    for how in ("whole", "per-file"):
        server = make_server(tmp_path / how)
        os.chown(server.destination, -1, gid)
        os.chmod(server.destination, 0o2750)
        name = server.commit(files)
        add_empty_folder(server, name, "sub1/empty")
        with monkeypatch.context() as m:
            if how == "per-file":
                m.setattr(processor, "move_new_folders", lambda *a, **k: None)
            run_once(server.config)
        assert tree_files(server.destination) == files
        trees[how] = snapshot(server.destination)
    assert trees["whole"] == trees["per-file"]
    for rel, (mode, _, group) in trees["whole"].items():
        assert group == gid, rel
        if stat.S_ISDIR(mode):
            assert stat.S_IMODE(mode) == 0o2750, rel
        else:
            assert stat.S_IMODE(mode) == 0o440, rel


def test_staged_folders_are_made_with_plain_modes_and_inherit_setgid(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk never asks mkdir() for S_ISGID (the unit's RestrictSUIDSGID= refuses it);
    the bit comes from the destination through the staging folders."""
    real = os.mkdir
    asked: list[int] = []

    def mkdir(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        asked.append(mode)
        real(path, mode, dir_fd=dir_fd)

    server.commit({"a/b/c.txt": b"c"})
    monkeypatch.setattr(os, "mkdir", mkdir)
    run_once(server.config)
    assert asked and not any(mode & (stat.S_ISGID | stat.S_ISUID) for mode in asked)
    assert stat.S_IMODE((server.destination / "a").stat().st_mode) == 0o2750
    assert stat.S_IMODE((server.destination / "a/b").stat().st_mode) == 0o2750


# -- later uploads of the same paths ------------------------------------------------------------


def test_a_second_upload_with_new_content_goes_file_by_file(
    server: Server, renames: Renames
) -> None:
    first = lab_files(per=1)
    server.commit(first)
    run_once(server.config)
    renames.clear()
    second = {p: d + b" v2" for p, d in first.items()}
    server.commit(second)
    run_once(server.config)
    # Every folder is there already: nothing is renamed onto it, each file goes by itself.
    assert sorted(src for src, _, _ in renames.calls) == sorted(second)
    expected = dict(first)
    for path, data in second.items():
        head, _, base = path.rpartition("/")
        stem, dot, ext = base.partition(".")
        versioned = f"{stem}~2{dot}{ext}"
        expected[f"{head}/{versioned}" if head else versioned] = data
    assert tree_files(server.destination) == expected
    assert server.problems(sent_of(first, second)) == []


def test_a_second_upload_with_the_same_content_writes_nothing(
    server: Server, renames: Renames
) -> None:
    files = lab_files(per=1)
    server.commit(files)
    run_once(server.config)
    renames.clear()
    server.commit(files)
    summary = run_once(server.config)
    assert (summary.stored, summary.duplicates) == (0, len(files))
    assert renames.calls == []
    assert tree_files(server.destination) == files
    assert server.problems(sent_of(files)) == []


def test_a_folder_with_a_duplicate_under_it_is_not_moved_whole(
    server: Server, renames: Renames
) -> None:
    """The tree's copy of an earlier upload's folder was removed (root may purge), so nothing
    stands where the folder would go: still, its duplicate must not be written, and the folder
    goes file by file. A sibling folder with only new files still arrives whole."""
    server.commit({"s/x/dup.txt": b"same", "keep.txt": b"k"})
    run_once(server.config)
    shutil.rmtree(server.destination / "s")
    renames.clear()
    files = {"s/x/dup.txt": b"same", "s/x/new.txt": b"new", "s/y/other.txt": b"other"}
    server.commit(files)
    summary = run_once(server.config)
    assert (summary.stored, summary.duplicates) == (2, 1)
    assert sorted(src for src, _, _ in renames.calls) == ["s/x/new.txt", "s/y"]
    assert tree_files(server.destination) == {
        "keep.txt": b"k",
        "s/x/new.txt": b"new",
        "s/y/other.txt": b"other",
    }
    last = {r["path"]: r for r in ledger_of(server.destination)[-3:]}
    assert last["s/x/dup.txt"]["outcome"] == "duplicate"
    assert last["s/y/other.txt"]["stored_as"] == "s/y/other.txt"


def test_a_folder_with_a_recorded_file_under_it_is_not_moved_whole(tmp_path: Path) -> None:
    """A replay: a file already recorded for this upload holds its folders (and only them)."""
    staging, tree = tmp_path / "staging", tmp_path / "tree"
    for rel in ("a/b/f.txt", "a/c/g.txt", "d/h.txt"):
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(b"x")
    tree.mkdir()

    class Ledger:
        def recorded(self, upload: str, path: str) -> tuple[str, str] | None:
            return ("a/b/f.txt", "stored") if path == "a/b/f.txt" else None

        def stored_version(self, path: str, sha256: str) -> str | None:
            return None

    files = [StagedFile(p, 1, "0" * 64, p, 0) for p in ("a/b/f.txt", "a/c/g.txt", "d/h.txt")]
    moved = MovedFolders()
    sfd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    dfd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    dirs = TreeDirs(dfd)
    try:
        move_new_folders(
            dirs,
            sfd,
            Ledger(),  # type: ignore[arg-type]
            "up",
            files=files,
            dirs=["a", "a/b", "a/c", "d"],
            into=moved,
        )
    finally:
        dirs.close()
        os.close(sfd)
        os.close(dfd)
    assert moved.moved == {"a/c": "a/c", "d": "d"}
    assert (staging / "a/b/f.txt").exists()
    assert sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*")) == [
        "a",
        "a/c",
        "a/c/g.txt",
        "d",
        "d/h.txt",
    ]


# -- whatever stands where a folder would go ------------------------------------------------


def test_a_file_where_the_folder_would_go_sends_it_whole_to_the_next_name(
    server: Server, renames: Renames
) -> None:
    (server.destination / "raw").write_bytes(b"not a folder")
    files = {"raw/s1/a.txt": b"a", "raw/s2/b.txt": b"b"}
    server.commit(files)
    run_once(server.config)
    assert (server.destination / "raw").read_bytes() == b"not a folder"
    assert [(src, dst) for src, dst, _ in renames.tried] == [("raw", "raw"), ("raw", "raw~2")]
    assert [(src, dst) for src, dst, _ in renames.calls] == [("raw", "raw~2")]
    assert (server.destination / "raw~2").lstat().st_ino == renames.calls[0][2]
    assert {r["stored_as"] for r in ledger_of(server.destination)} == {
        "raw~2/s1/a.txt",
        "raw~2/s2/b.txt",
    }
    assert sent_problems(server.destination, sent_of(files)) == []


@pytest.mark.parametrize("target", ["nowhere", "outside-dir"])
def test_a_symlink_where_the_folder_would_go_is_never_followed(
    server: Server, tmp_path: Path, target: str
) -> None:
    outside = tmp_path / target
    if target == "outside-dir":
        outside.mkdir()
    os.symlink(outside, server.destination / "raw")
    server.commit({"raw/s1/a.txt": b"a"})
    run_once(server.config)
    assert os.readlink(server.destination / "raw") == str(outside)
    if target == "nowhere":
        assert not outside.exists() and not outside.is_symlink()
    else:
        assert list(outside.iterdir()) == []
    assert (server.destination / "raw~2/s1/a.txt").read_bytes() == b"a"
    assert tree_problems(server.destination) == []


def test_a_folder_already_in_the_tree_is_filled_file_by_file_and_new_subfolders_move_whole(
    server: Server, renames: Renames
) -> None:
    server.commit({"sub0/ses0/a.txt": b"a"})
    run_once(server.config)
    renames.clear()
    files = {"sub0/ses0/b.txt": b"b", "sub0/ses1/c.txt": b"c", "sub1/ses0/d.txt": b"d"}
    server.commit(files)
    run_once(server.config)
    assert sorted(src for src, _, _ in renames.tried) == [
        "sub0",  # tried: a folder is there, so nothing is renamed onto it
        "sub0/ses0",  # the same
        "sub0/ses0/b.txt",
        "sub0/ses1",
        "sub1",
    ]
    assert sorted(src for src, _, _ in renames.calls) == ["sub0/ses0/b.txt", "sub0/ses1", "sub1"]
    assert tree_files(server.destination) == files | {"sub0/ses0/a.txt": b"a"}
    assert server.problems(sent_of({"sub0/ses0/a.txt": b"a"}, files)) == []
    assert fixity(server) == ([], 4)


# -- old journals, kills, stops -------------------------------------------------------------


def flatten_staging(server: Server) -> None:
    """Turn a staged entry into the layout of an older processor: flat ``00000000`` copies,
    no folders, and a journal naming them so."""
    journal = Journal(claims_dir(server.config.dropbox, STUDY))
    (entry,) = journal.entries()
    item = journal.read(entry)
    assert item is not None and item.step == "staged"
    staging = server.destination / ".dittohead" / "staging" / entry
    flat = []
    for i, f in enumerate(item.files):
        os.rename(staging / f.staged, staging / f"{i:08d}")
        flat.append(StagedFile(f.path, f.size, f.sha256, f"{i:08d}", f.ino))
    for child in staging.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
    item.files = flat
    journal.write(item)


def test_an_old_journal_with_flat_staged_names_still_replays(server: Server) -> None:
    files = lab_files(per=2)
    name = server.commit(files)
    add_empty_folder(server, name, "sub0/empty")
    assert run_processor(server, "staged:1") == -signal.SIGKILL
    flatten_staging(server)
    assert run_processor(server) == 0
    assert tree_files(server.destination) == files
    assert (server.destination / "sub0/empty").is_dir()
    assert server.problems(sent_of(files)) == []


MIXED_FIRST = {"old/ses0/a.txt": b"a", "old/ses0/b.txt": b"b"}
MIXED = {
    "top.txt": b"top",
    "new/ses0/c.txt": b"c",  # new: moved whole
    "new/ses1/d.txt": b"d",
    "old/ses0/a.txt": b"a",  # a duplicate, in a folder already there: file by file
    "old/ses0/e.txt": b"e",
    "old/ses1/f.txt": b"f",  # old/ses1 is new: moved whole into old/
    "z/g.txt": b"g",  # new: moved whole
}
# Renames out of staging in the mixed entry: moved whole "new", "old/ses1", "z"; per file
# "top.txt", "old/ses0/e.txt". Stored records: 6 (published x6), one duplicate.
MIXED_CASES = [
    "staged:1", "moved:1", "moved:2", "moved:3",
    "published:1", "published:2", "published:3", "published:4", "published:6",
    "flushed:1",
]  # fmt: skip


@pytest.mark.parametrize("batch", [None, 1])
@pytest.mark.parametrize("crash", MIXED_CASES)
def test_a_kill_with_folders_moved_whole_and_file_by_file_is_finished_by_the_next_run(
    server: Server, crash: str, batch: int | None
) -> None:
    server.commit(MIXED_FIRST)
    assert run_processor(server) == 0
    server.commit(MIXED)
    assert run_processor(server, crash, batch) == -signal.SIGKILL, "the hook did not fire"
    if crash.startswith("published:") and batch == 1:
        # Every stored file before the n-th is recorded (flushed after each file).
        assert len(ledger_of(server.destination)) == 2 + int(crash.split(":")[1]) - 1 + (
            1 if int(crash.split(":")[1]) > 3 else 0  # the duplicate is the 4th file
        )
    assert run_processor(server, batch=batch) == 0
    expected = MIXED_FIRST | MIXED
    assert tree_files(server.destination) == expected
    assert server.problems(sent_of(MIXED_FIRST, MIXED)) == []
    stored_as = {r["path"]: r["stored_as"] for r in ledger_of(server.destination)[2:]}
    assert stored_as == {p: p for p in MIXED}
    assert fixity(server) == ([], 8)


@pytest.mark.parametrize("crash", ["moved:1", "moved:2", "published:1", "published:13"])
def test_a_kill_in_a_big_new_tree_is_finished_by_the_next_run(server: Server, crash: str) -> None:
    """The bench's shape, small: a kill right after a folder moved (before any record), and
    in the middle of a moved folder's records after some were written (a batch every file)."""
    files = lab_files(subjects=3, per=4)
    server.commit(files)
    assert run_processor(server, crash, batch=1) == -signal.SIGKILL, "the hook did not fire"
    step, nth = crash.split(":")
    if step == "published":
        assert len(ledger_of(server.destination)) == int(nth) - 1
    else:
        assert ledger_of(server.destination) == []
        assert (server.destination / f"sub{int(nth) - 1}").is_dir()
    assert run_processor(server, batch=1) == 0
    assert tree_files(server.destination) == files
    assert server.problems(sent_of(files)) == []
    assert {r["path"]: r["stored_as"] for r in ledger_of(server.destination)} == {
        p: p for p in files
    }


@pytest.mark.parametrize("after", [1, 2, 5, 12, 18])
def test_a_stop_between_files_of_moved_folders_is_finished_by_the_next_run(
    server: Server, after: int
) -> None:
    """A stop comes between two files, as it did before folders moved whole: the records of
    the files reached so far are written; the other files of the moved folders are in the
    tree, synced, and recorded by the next run."""
    files = lab_files(per=2)  # 16 files in folders (moved whole), then 2 at the top level
    name = server.commit(files)
    asked = iter(range(10_000))
    hooks = Hooks(stop_requested=lambda: next(asked) >= after)
    with pytest.raises(Stopped):
        run_once(server.config, hooks)
    records = ledger_of(server.destination)
    # The first ask is at the start of the study's pass; then one before each file.
    assert len(records) == after - 1
    in_folders = {p: d for p, d in files.items() if "/" in p}
    assert tree_files(server.destination).items() >= in_folders.items()
    assert Journal(claims_dir(server.config.dropbox, STUDY)).read(name) is not None
    summary = run_once(server.config)
    assert summary.entries == 1
    assert tree_files(server.destination) == files
    assert server.problems(sent_of(files)) == []
    assert fixity(server) == ([], len(files))


def test_the_journal_lists_staged_paths(server: Server) -> None:
    files = {"a/b.txt": b"b", "c.txt": b"c"}
    server.commit(files)
    assert run_processor(server, "staged:1") == -signal.SIGKILL
    journal = Journal(claims_dir(server.config.dropbox, STUDY))
    (entry,) = journal.entries()
    doc = json.loads((journal.dir / f"{entry}.json").read_bytes())
    assert {f["path"]: f["staged"] for f in doc["files"]} == {
        "a/b.txt": "a/b.txt",
        "c.txt": "c.txt",
    }
    staging = server.destination / ".dittohead" / "staging" / entry
    assert (staging / "a/b.txt").read_bytes() == b"b"
    assert stat.S_IMODE((staging / "a/b.txt").stat().st_mode) == 0o440
