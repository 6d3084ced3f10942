"""fsops.replace_file: the old content or the new, never part of it, and nothing left beside."""

from __future__ import annotations

import os
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
