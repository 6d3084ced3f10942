"""Outcomes: the processor's per-upload documents, their modes and ACL, and the status verb's
reading of them (as the same uid here; tests/integration/test_collector.py proves over sshd
that another user can neither list nor read them)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct

import pytest

from dittohead.core.grammar import StatusRequest
from dittohead.receiver.config.checked import UploadSettings
from dittohead.receiver.dropbox import OUTCOMES
from dittohead.receiver.processor import outcomes
from dittohead.receiver.processor.finalize import Hooks, Stopped, run_once
from dittohead.receiver.upload import status
from tests.support.server import STUDY, Server


def test_acl_format() -> None:
    data = outcomes.acl_xattr(0o6, 1234, 0o4)
    version, *rest = struct.unpack("<I" + "HHI" * 5, data)
    assert version == 2
    entries = [tuple(rest[i : i + 3]) for i in range(0, 15, 3)]
    assert entries == [
        (0x01, 0o6, 0xFFFFFFFF),
        (0x02, 0o4, 1234),
        (0x04, 0, 0xFFFFFFFF),
        (0x10, 0o4, 0xFFFFFFFF),
        (0x20, 0, 0xFFFFFFFF),
    ]


def test_finalized_and_quarantined_outcomes(server: Server) -> None:
    old_umask = os.umask(0o027)  # the processor unit's UMask=
    try:
        _finalized_and_quarantined(server)
    finally:
        os.umask(old_umask)


def _finalized_and_quarantined(server: Server) -> None:
    good = server.commit({"eprime/s01.txt": b"one", "x.txt": b"same"})
    again = server.commit({"x.txt": b"same"})
    bad = server.commit({"a.txt": b"x"}, manifest={"files": 1, "bytes": 1, "entries": []})
    run_once(server.config)
    folder = server.config.study_dir(STUDY) / OUTCOMES / str(os.getuid())
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o711
    assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0o050  # group bits show the mask
    doc = json.loads((folder / f"{good}.json").read_text())
    assert doc["state"] == "finalized" and doc["source"] == "brogden-a"
    assert sorted((f["path"], f["outcome"], f["stored_as"]) for f in doc["files"]) == [
        ("eprime/s01.txt", "stored", "eprime/s01.txt"),
        ("x.txt", "stored", "x.txt"),
    ]
    dup = json.loads((folder / f"{again}.json").read_text())
    assert dup["files"] == [{"path": "x.txt", "outcome": "duplicate", "stored_as": "x.txt"}]
    quarantined = json.loads((folder / f"{bad}.json").read_text())
    assert quarantined["state"] == "quarantined" and quarantined["reason"]
    acl = os.getxattr(folder / f"{good}.json", "system.posix_acl_access")
    assert acl == outcomes.acl_xattr(0o6, os.getuid(), 0o4)
    assert not [n for n in os.listdir(folder) if n.startswith(".")]  # no temporary left

    # The status verb reads them back, newest first, and ignores what is not the processor's.
    (folder / "junk.json").write_text("{}")
    settings = UploadSettings.from_config(server.config)
    answer = json.loads(status.answer(settings, StatusRequest(STUDY)))
    assert {u["upload"] for u in answer["uploads"]} == {good, again, bad}
    times = [u["upload"].split("-")[-2] for u in answer["uploads"]]
    assert times == sorted(times, reverse=True)


def test_nothing_processed_yet_is_an_empty_answer(server: Server) -> None:
    settings = UploadSettings.from_config(server.config)
    assert json.loads(status.answer(settings, StatusRequest(STUDY)))["uploads"] == []


def test_every_committed_upload_is_waiting_before_the_first_is_claimed(server: Server) -> None:
    # The pass is stopped where it would claim its first entry: by then each uploader can
    # already see every committed upload as waiting, not only the one whose turn came.
    names = [server.commit({f"f{i}.txt": b"x"}) for i in range(3)]
    with pytest.raises(Stopped):
        run_once(server.config, Hooks(stop_requested=lambda: True))
    folder = server.config.study_dir(STUDY) / OUTCOMES / str(os.getuid())
    states = {n: json.loads((folder / f"{n}.json").read_text())["state"] for n in names}
    assert states == dict.fromkeys(names, "waiting")
    run_once(server.config)
    assert {json.loads((folder / f"{n}.json").read_text())["state"] for n in names} == {"finalized"}


def test_an_upload_its_owner_took_back_leaves_no_outcome(server: Server) -> None:
    name = server.commit({"a.txt": b"a"})
    folder = server.config.study_dir(STUDY) / OUTCOMES / str(os.getuid())

    def took_back() -> bool:
        # After the waiting outcomes are written, before the claim: the owner removes it.
        if (server.inbox / name).exists():
            shutil.rmtree(server.inbox / name)
        return False

    run_once(server.config, Hooks(stop_requested=took_back))
    assert not (folder / f"{name}.json").exists()
