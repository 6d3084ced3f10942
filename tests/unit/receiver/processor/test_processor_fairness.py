"""Round-robin between uploaders: one collector's flood cannot starve another's upload; and
one study in trouble does not hold up the others."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from dittohead.receiver.admin.init_cmd import init
from dittohead.receiver.config.model import load_config
from dittohead.receiver.dropbox import claims_dir
from dittohead.receiver.processor import finalize as processor
from dittohead.receiver.processor.claim import Candidate, fair_order
from dittohead.receiver.processor.finalize import StudiesFailed, run_once
from dittohead.receiver.processor.journal import Journal, JournalEntry
from tests.support.invariants import ledger_of
from tests.support.server import STUDY, Server, make_server


def cand(name: str, uid: int, ctime: int) -> Candidate:
    return Candidate(name, uid, ctime, 1, ctime)


def test_one_entry_per_uploader_in_turn_each_in_commit_order() -> None:
    flood = [cand(f"a{i}", 1001, 10 + i) for i in range(5)]
    late = [cand("b0", 1002, 100), cand("b1", 1002, 101)]
    third = [cand("c0", 1003, 12)]
    order = [c.name for c in fair_order(late + third + flood)]
    # Uploaders take turns in the order of their oldest waiting commit: a (10), c (12), b (100).
    assert order == ["a0", "c0", "b0", "a1", "b1", "a2", "a3", "a4"]


@given(
    st.lists(
        st.tuples(st.integers(1000, 1003), st.integers(0, 50)), max_size=30, unique_by=lambda t: t
    )
)
def test_fair_order_is_a_permutation_fair_and_ordered_per_uploader(
    items: list[tuple[int, int]],
) -> None:
    cands = [cand(f"e{i}", uid, ctime) for i, (uid, ctime) in enumerate(items)]
    order = fair_order(cands)
    assert sorted(c.name for c in order) == sorted(c.name for c in cands)
    for uid in {c.uid for c in cands}:
        mine = [c for c in order if c.uid == uid]
        assert mine == sorted(mine, key=lambda c: (c.ctime_ns, c.name))
    # Before any uploader's k-th entry, every uploader with at least k-1 entries has had k-1.
    seen: dict[int, int] = {}
    total = {uid: sum(c.uid == uid for c in cands) for uid in {c.uid for c in cands}}
    for c in order:
        k = seen.get(c.uid, 0)
        assert all(seen.get(u, 0) >= min(k, n) for u, n in total.items())
        seen[c.uid] = k + 1


def chown_tree(path: Path, uid: int) -> None:
    os.chown(path, uid, -1, follow_symlinks=False)
    for p in path.rglob("*"):
        os.chown(p, uid, -1, follow_symlinks=False)


@pytest.mark.root
def test_a_flood_does_not_starve_another_uploader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server: Server = make_server(tmp_path)
    # Two uploaders by uid alone (real accounts are the integration tier's business).
    monkeypatch.setattr(processor, "may_upload", lambda uid, groups: uid in (7001, 7002))
    flood = []
    for i in range(6):
        name = server.commit({"flood.txt": b"flood %d" % i})
        chown_tree(server.inbox / name, 7001)
        flood.append(name)
        time.sleep(0.01)
    time.sleep(0.02)
    small = server.commit({"small.txt": b"one small upload"})
    chown_tree(server.inbox / small, 7002)
    summary = run_once(server.config)
    assert summary.finalized == [flood[0], small, *flood[1:]]
    # The flood's own versions still follow its commit order.
    stored = {r["upload"]: r["stored_as"] for r in ledger_of(server.destination)}
    assert [stored[n] for n in flood] == ["flood.txt"] + [f"flood~{i}.txt" for i in range(2, 7)]


def test_a_failing_study_does_not_stop_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(tmp_path)
    doc = yaml.safe_load(server.config_path.read_text())
    (tmp_path / "study2").mkdir()
    doc["studies"] = {
        "broken": {**doc["studies"][STUDY], "destination": str(tmp_path / "study2" / "raw")},
        **doc["studies"],
    }
    server.config_path.write_text(yaml.safe_dump(doc))
    config = load_config(server.config_path)
    init(config)
    server = Server(server.base, server.config_path, config)
    # A journal naming an entry that is nowhere: that study stops with an error for the admin.
    Journal(claims_dir(config.dropbox, "broken")).write(
        JournalEntry("brogden-a-20260101T000000Z-0000000000000000", "broken", "staged", 0, "", 0, 0)
    )
    name = server.commit({"a.txt": b"still flows"})
    with pytest.raises(StudiesFailed, match=r"1 study could not be worked on .*\(broken\)"):
        run_once(config)
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line.startswith("broken: brogden-a-") and "journaled but not in processing" in line
    assert (config.study_dir(STUDY) / "done" / name).is_dir()
    assert (server.destination / "a.txt").read_bytes() == b"still flows"
