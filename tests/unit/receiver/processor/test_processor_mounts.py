"""A mount inside an entry (another file system, however it got there) is refused."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from dittohead.receiver.processor.finalize import run_once
from tests.support.invariants import tree_files
from tests.support.server import STUDY, make_server


@pytest.mark.root
def test_a_mount_inside_an_entry_is_quarantined(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    name = server.entry_name()
    staging = server.inbox / f".{name}"
    (staging / "sub").mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(staging / "sub")],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        (staging / "sub" / "x.txt").write_bytes(b"elsewhere")
        (staging / ".dittohead").mkdir()
        entry = {"path": "sub/x.txt", "size": 9, "sha256": hashlib.sha256(b"elsewhere").hexdigest()}
        manifest = {"files": 1, "bytes": 9, "entries": [entry]}
        (staging / ".dittohead" / "manifest.json").write_text(json.dumps(manifest))
        os.rename(staging, server.inbox / name)
        good = server.commit({"ok.txt": b"fine"})
        summary = run_once(server.config)
        study = server.config.study_dir(STUDY)
        assert summary.quarantined == 1
        assert "another file system" in (study / "quarantine" / f"{name}.reason").read_text()
        assert tree_files(server.destination) == {"ok.txt": b"fine"}
        assert (study / "done" / good).is_dir()
    finally:
        for where in server.config.study_dir(STUDY).rglob("sub"):
            subprocess.run(["umount", "-l", str(where)], check=False)
        subprocess.run(["umount", "-l", str(staging / "sub")], check=False, capture_output=True)
