"""The file-system fallbacks of `fscaps`, forced on the local file system: each keeps the
guarantee of the primitive it stands in for (never replace, whole or nothing, durable), a
crash between its steps is finished by the next call, and the mode is logged once."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dittohead.receiver import fscaps, fsops


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(fscaps.FORCE_ENV, "1")
    fscaps.forget()
    yield
    fscaps.forget()


@pytest.fixture
def dir_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, fsops.DIR_FLAGS)
    yield fd
    os.close(fd)


def test_a_file_is_moved_by_link_and_never_onto_anything(
    forced: None, tmp_path: Path, dir_fd: int
) -> None:
    (tmp_path / "a").write_bytes(b"new")
    (tmp_path / "b").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        fscaps.rename_noreplace(dir_fd, "a", dir_fd, "b")
    assert (tmp_path / "b").read_bytes() == b"old"
    fscaps.rename_noreplace(dir_fd, "a", dir_fd, "c")
    assert not (tmp_path / "a").exists()
    assert (tmp_path / "c").read_bytes() == b"new"
    assert os.stat(tmp_path / "c").st_nlink == 1


def test_a_move_killed_between_link_and_unlink_is_finished_by_the_next(
    forced: None, tmp_path: Path, dir_fd: int
) -> None:
    (tmp_path / "a").write_bytes(b"x")
    os.link(tmp_path / "a", tmp_path / "b")  # what the killed move did
    fscaps.rename_noreplace(dir_fd, "a", dir_fd, "b")
    assert sorted(os.listdir(tmp_path)) == ["b"]


def test_a_missing_source_says_so(forced: None, dir_fd: int) -> None:
    with pytest.raises(FileNotFoundError):
        fscaps.rename_noreplace(dir_fd, "gone", dir_fd, "b")


def test_a_folder_never_replaces_even_an_empty_folder(
    forced: None, tmp_path: Path, dir_fd: int
) -> None:
    """rename(2) would replace an empty folder: the placeholder's mkdir refuses first."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"data")
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "g").write_bytes(b"g")
    for taken in ("empty", "full"):
        with pytest.raises(FileExistsError):
            fscaps.rename_noreplace(dir_fd, "src", dir_fd, taken)
    assert (tmp_path / "empty").is_dir() and not list((tmp_path / "empty").iterdir())
    assert (tmp_path / "full" / "g").read_bytes() == b"g"
    fscaps.rename_noreplace(dir_fd, "src", dir_fd, "dst")
    assert (tmp_path / "dst" / "f").read_bytes() == b"data"
    assert os.stat(tmp_path / "dst").st_mode & 0o777 != fscaps.PLACEHOLDER_MODE
    assert sorted(os.listdir(tmp_path)) == ["dst", "empty", "full"]


def test_a_placeholder_left_by_a_crash_is_taken_by_the_next_move_or_removed(
    forced: None, tmp_path: Path, dir_fd: int
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"data")
    os.mkdir(tmp_path / "dst", fscaps.PLACEHOLDER_MODE)  # killed after the mkdir
    assert fscaps.is_placeholder(dir_fd, "dst")
    fscaps.rename_noreplace(dir_fd, "src", dir_fd, "dst")
    assert (tmp_path / "dst" / "f").read_bytes() == b"data"
    assert not fscaps.is_placeholder(dir_fd, "dst")
    assert not fscaps.remove_placeholder(dir_fd, "dst")  # a real folder is never removed
    os.mkdir(tmp_path / "left", fscaps.PLACEHOLDER_MODE)
    assert fscaps.remove_placeholder(dir_fd, "left")
    assert not (tmp_path / "left").exists()


def test_a_failed_folder_move_leaves_no_placeholder(
    forced: None, tmp_path: Path, dir_fd: int
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "sub").mkdir()
    with pytest.raises(OSError) as caught:  # a folder into itself: EINVAL
        fscaps.rename_noreplace(dir_fd, "src", dir_fd, "src/sub/x")
    assert caught.value.errno == errno.EINVAL
    assert not (tmp_path / "src" / "sub" / "x").exists()


@pytest.mark.parametrize("mode", ["native", "fallback"])
def test_create_new_is_whole_and_never_replaces(
    tmp_path: Path, dir_fd: int, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if mode == "fallback":
        monkeypatch.setenv(fscaps.FORCE_ENV, "1")
    fscaps.forget()
    fscaps.create_new(dir_fd, "n.json", [b"a", b"b"], mode=0o640)
    assert (tmp_path / "n.json").read_bytes() == b"ab"
    assert os.stat(tmp_path / "n.json").st_mode & 0o777 == 0o640
    with pytest.raises(FileExistsError):
        fscaps.create_new(dir_fd, "n.json", [b"other"])
    assert (tmp_path / "n.json").read_bytes() == b"ab"
    assert os.listdir(tmp_path) == ["n.json"]  # no temporary file left either way


def test_a_temp_file_of_a_killed_create_is_known_to_the_janitor(
    forced: None, tmp_path: Path, dir_fd: int
) -> None:
    (tmp_path / f".n.json.{os.getpid()}.tmp").write_bytes(b"half")  # killed before unlink
    fscaps.create_new(dir_fd, "n.json", [b"whole"])
    assert (tmp_path / "n.json").read_bytes() == b"whole"
    assert fsops.remove_leftover_temps(tmp_path) == [f".n.json.{os.getpid()}.tmp"]
    assert os.listdir(tmp_path) == ["n.json"]


def test_sync_tree_fsyncs_every_file_and_folder_without_syncfs(
    forced: None, tmp_path: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_bytes(b"f")
    (tmp_path / "g").write_bytes(b"g")
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}").removeprefix(str(tmp_path)))
        real(fd)

    def no_syncfs(fd: int) -> None:
        raise AssertionError("syncfs used in fallback mode")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(fsops, "syncfs", no_syncfs)
    fscaps.sync_tree(dir_fd)
    assert sorted(synced) == ["", "/a", "/a/b", "/a/b/f", "/g"]


def test_probe_finds_the_modes_and_working_locks(tmp_path: Path, dir_fd: int) -> None:
    fscaps.forget()
    found = fscaps.probe(dir_fd)
    assert found.locks is True
    # The local file system of the tests (ext4, xfs, tmpfs, overlay) has every primitive.
    assert all(found.modes.values()), found
    assert os.listdir(tmp_path) == []  # the probe's folder is gone again


def test_probe_reports_fallbacks_when_forced_and_logs_a_mode_once(
    forced: None, tmp_path: Path, dir_fd: int, caplog: pytest.LogCaptureFixture
) -> None:
    found = fscaps.probe(dir_fd)
    assert not any(found.modes.values())
    assert found.locks is True
    assert "rename_noreplace=fallback" in list(fscaps.describe(found))
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    fscaps.forget()
    with caplog.at_level(logging.INFO, logger="dittohead.receiver.fsmodes"):
        # a refusal noted twice (as two moves on one file system would): one line
        fscaps.refused(dir_fd, "rename_noreplace", "renameat2 answered EINVAL")
        fscaps.refused(dir_fd, "rename_noreplace", "renameat2 answered EINVAL")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert str(tmp_path) in lines[0] and "link()+unlink()" in lines[0]


def test_open_beneath_walks_and_refuses_a_symlink_when_forced(
    forced: None, tmp_path: Path, dir_fd: int
) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"f")
    (tmp_path / "d" / "link").symlink_to("f")
    fd = fsops.open_beneath(dir_fd, "d/f", os.O_RDONLY)
    assert os.read(fd, 9) == b"f"
    os.close(fd)
    for flags in (os.O_RDONLY, fsops.O_PATH):
        with pytest.raises(OSError) as caught:
            fsops.open_beneath(dir_fd, "d/link", flags)
        assert caught.value.errno == errno.ELOOP
    with pytest.raises(OSError):
        fsops.open_beneath(dir_fd, "../x", os.O_RDONLY)
