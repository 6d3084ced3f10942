"""An uploader changing their entry while it is being verified (through fds they still hold).

Made deterministic with the processor's fault points: the change happens right after the
first file (``a.txt``) is copied into staging, when the walk has listed the entry's top folder
but not yet opened ``b.txt`` or ``d``. Whatever the change, it costs
only that entry (quarantined with a reason), never the pass: a good entry committed after it
is still published in the same run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from dittohead.receiver.processor import finalize as processor
from dittohead.receiver.processor.finalize import run_once
from tests.support.invariants import tree_files, tree_problems
from tests.support.server import STUDY, Server, make_server

# The same guarantees with every file-system fallback forced (fscaps).
pytestmark = pytest.mark.usefixtures("fs_mode")


def remove_file(entry: Path) -> None:
    (entry / "b.txt").unlink()


def remove_folder(entry: Path) -> None:
    shutil.rmtree(entry / "d")


def folder_to_symlink(entry: Path) -> None:
    shutil.rmtree(entry / "d")
    os.symlink("/etc", entry / "d")


def file_to_symlink(entry: Path) -> None:
    (entry / "b.txt").unlink()
    os.symlink("/etc/passwd", entry / "b.txt")


def file_grows(entry: Path) -> None:
    with (entry / "b.txt").open("ab") as f:
        f.write(b" and more")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (remove_file, "changed while it was being read"),
        (remove_folder, "changed while it was being read"),
        (folder_to_symlink, "not a regular file or folder"),
        (file_to_symlink, "not a regular file or folder"),
        (file_grows, "size"),
    ],
)
def test_a_change_during_verification_costs_only_that_entry(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[Path], None],
    reason: str,
) -> None:
    server: Server = make_server(tmp_path)
    name = server.commit({"a.txt": b"first", "b.txt": b"second", "d/c.txt": b"third"})
    good = server.commit({"good.txt": b"still flows"})
    entry = server.config.study_dir(STUDY) / "processing" / name
    changed: list[str] = []

    def meddle(step: str) -> None:
        if step == "copied" and not changed and entry.exists():
            changed.append(step)
            change(entry)

    monkeypatch.setattr(processor, "fault_point", meddle)
    summary = run_once(server.config)
    assert changed
    assert (summary.entries, summary.quarantined) == (1, 1)
    quarantine = server.config.study_dir(STUDY) / "quarantine"
    assert reason in (quarantine / f"{name}.reason").read_text()
    assert tree_files(server.destination) == {"good.txt": b"still flows"}
    assert (server.config.study_dir(STUDY) / "done" / good).is_dir()
    assert tree_problems(server.destination) == []
