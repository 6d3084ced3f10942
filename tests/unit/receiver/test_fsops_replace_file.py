"""fsops.replace_file: the old content or the new, never part of it, and nothing left beside."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dittohead.receiver import fsops


def test_replaces_with_the_chunks_and_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_bytes(b"old")
    fsops.replace_file(target, (b"n", bytearray(b"ew")), mode=0o640)
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_failure_midway_keeps_the_old_content_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    target = tmp_path / "f.json"
    target.write_bytes(b"old")

    def chunks() -> Iterator[bytes]:
        yield b"half"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        fsops.replace_file(target, chunks())
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_link_in_the_temporary_files_place_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"untouched")
    (tmp_path / f".f.json.{os.getpid()}.tmp").symlink_to(elsewhere)
    with pytest.raises(OSError):
        fsops.replace_file(target, (b"new",))
    assert elsewhere.read_bytes() == b"untouched"
    assert not target.exists()


KILLED_MIDWAY = """
import os, signal, sys
from pathlib import Path
from dittohead.receiver import fsops

def chunks():
    yield b"new"
    os.kill(os.getpid(), signal.SIGKILL)

fsops.replace_file(Path(sys.argv[1]), chunks())
"""


def test_what_a_kill_midway_leaves_is_removed_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_bytes(b"old")
    killed = subprocess.run([sys.executable, "-c", KILLED_MIDWAY, str(target)], check=False)
    assert killed.returncode == -signal.SIGKILL
    (left,) = (p.name for p in tmp_path.iterdir() if p.name != "f.json")
    assert left.startswith(".f.json.")
    assert left.endswith(".tmp")
    # Names that only look alike stay: another program's files, or no process id in them.
    others = {"keep.tmp", ".g.json.tmp", ".g.json.abc.tmp", ".tmp", "g.json.12.tmp"}
    for name in others:
        (tmp_path / name).write_bytes(b"")
    assert fsops.remove_leftover_temps(tmp_path) == [left]
    assert {p.name for p in tmp_path.iterdir()} == {"f.json", *others}
    assert target.read_bytes() == b"old"


def test_no_folder_no_leftovers(tmp_path: Path) -> None:
    assert fsops.remove_leftover_temps(tmp_path / "none") == []
