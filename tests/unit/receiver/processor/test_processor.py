"""The processor on hand-built committed entries: publishing rules, ledger, quarantine."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from dittohead.receiver.admin.history_cmd import latest, verify
from dittohead.receiver.processor.finalize import run_once
from dittohead.receiver.processor.ledger import check_chain, read_ledger
from tests.support.invariants import ledger_of, tree_files
from tests.support.server import STUDY, Server

# The same guarantees with every file-system fallback forced (fscaps).
pytestmark = pytest.mark.usefixtures("fs_mode")


def test_first_upload_is_stored_under_its_own_names(server: Server) -> None:
    name = server.commit({"eprime/s01.txt": b"one", "biopac/s01.acq": b"\x00" * 1000})
    summary = run_once(server.config)
    assert summary.entries == 1 and summary.stored == 2
    assert tree_files(server.destination) == {
        "eprime/s01.txt": b"one",
        "biopac/s01.acq": b"\x00" * 1000,
    }
    assert not list(server.inbox.iterdir())
    assert (server.config.study_dir(STUDY) / "done" / name).is_dir()
    records = ledger_of(server.destination)
    assert {r["path"] for r in records} == {"eprime/s01.txt", "biopac/s01.acq"}
    assert all(r["outcome"] == "stored" and r["upload"] == name for r in records)
    assert all(r["source"] == "brogden-a" and r["uid"] == os.getuid() for r in records)
    assert check_chain(records) == []


def test_stored_files_are_read_only_and_folders_setgid(server: Server) -> None:
    server.commit({"eprime/s01.txt": b"one"})
    run_once(server.config)
    file_mode = stat.S_IMODE((server.destination / "eprime/s01.txt").stat().st_mode)
    dir_mode = stat.S_IMODE((server.destination / "eprime").stat().st_mode)
    assert file_mode == 0o440
    assert dir_mode == 0o2750


def test_changed_content_becomes_a_new_version_and_the_first_keeps_its_name(
    server: Server,
) -> None:
    server.commit({"eprime/s01.txt": b"v1", "a.tar.gz": b"A1"})
    run_once(server.config)
    server.commit({"eprime/s01.txt": b"v2", "a.tar.gz": b"A2"})
    run_once(server.config)
    server.commit({"eprime/s01.txt": b"v3"})
    run_once(server.config)
    assert tree_files(server.destination) == {
        "eprime/s01.txt": b"v1",
        "eprime/s01~2.txt": b"v2",
        "eprime/s01~3.txt": b"v3",
        "a.tar.gz": b"A1",
        "a.tar~2.gz": b"A2",
    }
    newest = latest(ledger_of(server.destination))
    assert newest["eprime/s01.txt"]["stored_as"] == "eprime/s01~3.txt"
    assert newest["a.tar.gz"]["stored_as"] == "a.tar~2.gz"


def test_identical_content_is_a_duplicate_and_writes_nothing(server: Server) -> None:
    server.commit({"x.txt": b"same"})
    server.commit({"x.txt": b"other"})
    server.commit({"x.txt": b"same"})
    summary = run_once(server.config)
    assert (summary.stored, summary.duplicates) == (2, 1)
    assert tree_files(server.destination) == {"x.txt": b"same", "x~2.txt": b"other"}
    last = ledger_of(server.destination)[-1]
    assert last["outcome"] == "duplicate" and last["stored_as"] == "x.txt"


def test_entries_are_finalized_in_commit_order(server: Server) -> None:
    # File timestamps tick at the kernel's clock granularity (a few ms), so commits made within
    # one tick tie (and are then ordered by name); the pauses keep these apart.
    first = server.commit({"f.txt": b"first"})
    time.sleep(0.05)
    second = server.commit({"f.txt": b"second"})
    time.sleep(0.05)
    # Make the commit order disagree with the names' order: ctime decides, not the name.
    os.utime(server.inbox / first)  # touching changes ctime too: `first` now committed later
    run_once(server.config)
    by_upload = {r["upload"]: r["stored_as"] for r in ledger_of(server.destination)}
    assert by_upload[second] == "f.txt" and by_upload[first] == "f~2.txt"


def test_whatever_is_in_the_way_is_never_touched(server: Server) -> None:
    dest = server.destination
    (dest / "data.txt").mkdir()  # a folder where a file wants to go
    os.symlink("/etc/passwd", dest / "data~2.txt")  # a symlink at the next name
    (dest / "logs").write_bytes(b"not a folder")  # a file where a folder wants to go
    server.commit({"data.txt": b"payload", "logs/run.log": b"log"})
    run_once(server.config)
    assert (dest / "data.txt").is_dir()
    assert os.readlink(dest / "data~2.txt") == "/etc/passwd"
    assert (dest / "data~3.txt").read_bytes() == b"payload"
    assert (dest / "logs").read_bytes() == b"not a folder"
    assert (dest / "logs~2" / "run.log").read_bytes() == b"log"


def test_a_symlinked_destination_folder_is_not_followed(server: Server, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, server.destination / "eprime")
    server.commit({"eprime/s01.txt": b"data"})
    run_once(server.config)
    assert list(outside.iterdir()) == []
    assert (server.destination / "eprime~2" / "s01.txt").read_bytes() == b"data"


@pytest.mark.parametrize(
    ("files", "manifest_change", "reason"),
    [
        ({"a.txt": b"abc"}, lambda m: m["entries"][0].update(sha256="0" * 64), "sha256"),
        ({"a.txt": b"abc"}, lambda m: m["entries"][0].update(size=4, sha256="0" * 64), "size"),
        ({"a.txt": b"abc", "b.txt": b"x"}, lambda m: m["entries"].pop(), "not listed"),
    ],
)
def test_an_entry_that_disagrees_with_its_manifest_is_quarantined(
    server: Server, files: dict[str, bytes], manifest_change: object, reason: str
) -> None:
    entries = [
        {"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
        for p, d in files.items()
    ]
    manifest: dict[str, Any] = {"entries": entries}
    manifest_change(manifest)  # type: ignore[operator]
    manifest["files"] = len(manifest["entries"])
    manifest["bytes"] = sum(e["size"] for e in manifest["entries"])
    good = server.commit({"ok.txt": b"fine"})
    bad = server.commit(files, manifest=manifest)
    summary = run_once(server.config)
    assert summary.quarantined == 1 and summary.entries == 1
    quarantine = server.config.study_dir(STUDY) / "quarantine"
    assert (quarantine / bad).is_dir()
    assert reason in (quarantine / f"{bad}.reason").read_text()
    assert tree_files(server.destination) == {
        "ok.txt": b"fine"
    }  # nothing of the bad entry published
    assert [r["upload"] for r in ledger_of(server.destination)] == [good]


def test_ledger_verify_finds_tampering(server: Server) -> None:
    server.commit({"a.txt": b"abc", "b.txt": b"def"})
    run_once(server.config)
    fd = os.open(server.destination, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert verify(fd, read_ledger(fd)) == ([], 2)
        target = server.destination / "a.txt"
        target.chmod(0o640)
        target.write_bytes(b"abX")
        (server.destination / "stray.txt").write_bytes(b"?")
        problems, _ = verify(fd, read_ledger(fd))
    finally:
        os.close(fd)
    assert "a.txt: its sha256 differs from the ledger: the file was changed" in "".join(problems)
    assert any("stray.txt: in the tree but not in the ledger" in p for p in problems)


def test_ledger_chain_detects_an_edited_line(server: Server) -> None:
    server.commit({"a.txt": b"abc", "b.txt": b"def"})
    run_once(server.config)
    path = server.destination / ".dittohead" / "ledger.jsonl"
    lines = path.read_text().splitlines()
    doc = json.loads(lines[0])
    doc["uploader"] = "someone-else"
    lines[0] = json.dumps(doc)
    path.write_text("\n".join(lines) + "\n")
    assert check_chain(ledger_of(server.destination)) == [
        "record 1 (a.txt, line 1): the record was edited (its fields do not match its hash)"
    ]


def _ledger_lines(server: Server, files: int) -> tuple[Path, list[str]]:
    server.commit({f"f{i}.txt": f"file {i}".encode() for i in range(files)})
    run_once(server.config)
    path = server.destination / ".dittohead" / "ledger.jsonl"
    return path, path.read_text().splitlines()


def test_a_deleted_ledger_line_is_one_break_with_the_records_that_follow(server: Server) -> None:
    path, lines = _ledger_lines(server, 6)
    del lines[2]  # record 3
    path.write_text("\n".join(lines) + "\n")
    [problem] = check_chain(ledger_of(server.destination))
    assert problem.startswith("the chain breaks at record 4 (")
    assert problem.endswith(", line 3): 1 record(s) missing before it; 3 record(s) from there on")


def test_an_edited_size_is_named_as_the_records_size_not_the_files_content(
    server: Server,
) -> None:
    path, lines = _ledger_lines(server, 2)
    doc = json.loads(lines[0])
    doc["size"] += 1
    lines[0] = json.dumps(doc)
    path.write_text("\n".join(lines) + "\n")
    fd = os.open(server.destination, os.O_RDONLY | os.O_DIRECTORY)
    try:
        problems, checked = verify(fd, read_ledger(fd))
    finally:
        os.close(fd)
    stored = doc["stored_as"]
    assert checked == 2
    assert problems == [
        f"record 1 ({stored}, line 1): the record was edited (its fields do not match its hash)",
        f"{stored}: the ledger says {doc['size']} bytes, the file has {doc['size'] - 1}, and its "
        "sha256 matches the ledger: the file is intact, the record's size was changed",
    ]


def test_an_unknown_station_that_got_past_the_receiver_is_quarantined(server: Server) -> None:
    # The server's sources list brogden-a: an entry written into the inbox by hand under
    # another spelling is refused by the processor too, with the reason for the admin.
    odd = server.commit({"a.txt": b"from nowhere"}, source="Brogden-A")
    known = server.commit({"b.txt": b"from brogden-a"})
    summary = run_once(server.config)
    assert summary.finalized == [known] and summary.quarantined == 1
    quarantine = server.config.study_dir(STUDY) / "quarantine"
    reason = (quarantine / f"{odd}.reason").read_text()
    assert "the station id 'Brogden-A' is not one this server knows" in reason
    assert "did you mean 'brogden-a'?" in reason
    assert not (server.destination / "a.txt").exists()
