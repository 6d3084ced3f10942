"""The ledger's history is not held in memory: a filter of its paths, and one read of the file
for the paths an entry brings (`Ledger.prepare`). Its answers must be those of a plain model
built from every record, whatever the paths look like and however a line is spelt."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dittohead.receiver.processor import ledger as ledger_mod
from dittohead.receiver.processor.ledger import Ledger, Record, check_chain, read_ledger
from tests.support.ledger import make_record

# Paths that test the raw look-up: quotes, backslashes, non-ASCII, control characters, the
# look-up's own key inside a path, and paths that are prefixes of each other.
_ODD = [
    "a.txt",
    "a.tx",
    'q"uote.txt',
    "back\\slash",
    "tr\\",
    "ünï/cødé.txt",
    "ctl\x01\x1f\n.txt",
    '"path":"x',
    'x","prev":"y',
    "😀/emoji",
    "sp ace/ b",
]
_SHAS = ["1" * 64, "2" * 64, "3" * 64]


def _model(records: list[Record]) -> dict[str, dict[str, str]]:
    versions: dict[str, dict[str, str]] = {}
    for r in records:
        versions.setdefault(r.path, {}).setdefault(r.sha256, r.stored_as)
    return versions


def _check(ledger: Ledger, versions: dict[str, dict[str, str]], paths: list[str]) -> None:
    for path in paths:
        for sha in _SHAS:
            assert ledger.stored_version(path, sha) == versions.get(path, {}).get(sha), path


_steps = st.lists(
    st.tuples(st.sampled_from(_ODD), st.sampled_from(_SHAS), st.sampled_from(["", "~2", "~3"])),
    max_size=16,
)


@settings(max_examples=60)
@given(_steps, st.booleans(), st.booleans())
def test_history_answers_like_the_plain_model(
    steps: list[tuple[str, str, str]], prepare: bool, always_maybe: bool
) -> None:
    records = [make_record(p, sha, p + where) for p, sha, where in steps]
    versions = _model(records)
    with tempfile.TemporaryDirectory() as tmp:
        dest = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with Ledger(dest, replay=()) as ledger:
                for record in records:
                    ledger.append(record)
            with pytest.MonkeyPatch.context() as mp:
                if always_maybe:  # as if every path collided in the filter: read the file
                    mp.setattr(Ledger, "_may_have", lambda _self, _path: True)
                ledger = Ledger(dest, replay=())
                if prepare:
                    ledger.prepare(_ODD)
                _check(ledger, versions, [*_ODD, "never/sent"])
                # More records after the load: appended paths are complete (history first).
                more = [make_record(p, _SHAS[2], p + "~9") for p in _ODD[:4]]
                for record in more:
                    ledger.append(record)
                _check(ledger, _model(records + more), _ODD)
                ledger.close()
        finally:
            os.close(dest)


def test_lines_spelt_otherwise_are_read_in_full(tmp_path: Path) -> None:
    """A line that is valid JSON but not as encode_line writes it (spaces, escapes, another key
    order) is still found: the raw look-up only skips lines it can read exactly."""
    dest = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with Ledger(dest, replay=()) as ledger:
            ledger.append(make_record("plain.txt", _SHAS[0], "plain.txt"))
        path = tmp_path / ".dittohead" / "ledger.jsonl"
        base = json.loads(path.read_bytes())
        odd = [
            json.dumps({**base, "path": "spaced.txt", "stored_as": "spaced~2.txt"}),
            json.dumps({**base, "path": "esc.txt"}, sort_keys=True).replace('"esc', '"\\u0065sc'),
            json.dumps(dict(reversed(list({**base, "path": "rev.txt"}.items())))),
            # the same key twice (JSON takes the last), the second spelt with a space
            json.dumps({**base, "path": "first.txt"}, separators=(",", ":"))[:-1]
            + ',"path" :"twice.txt"}',
            # a value that reads "path"
            json.dumps({**base, "path": "val.txt", "source": "path"}, separators=(",", ":")),
        ]
        with path.open("a") as fh:
            fh.write("\n".join(odd) + "\n")
        ledger = Ledger(dest, replay=())
        try:
            ledger.prepare(["spaced.txt", "esc.txt", "rev.txt", "plain.txt", "first.txt"])
            ledger.prepare(["twice.txt", "val.txt"])
            assert ledger.stored_version("twice.txt", _SHAS[0]) == "plain.txt"
            assert ledger.stored_version("first.txt", _SHAS[0]) is None
            assert ledger.stored_version("val.txt", _SHAS[0]) == "plain.txt"
            assert ledger.stored_version("spaced.txt", _SHAS[0]) == "spaced~2.txt"
            assert ledger.stored_version("esc.txt", _SHAS[0]) == "plain.txt"
            assert ledger.stored_version("rev.txt", _SHAS[0]) == "plain.txt"
            assert ledger.stored_version("plain.txt", _SHAS[0]) == "plain.txt"
            assert ledger.count == 6
        finally:
            ledger.close(flush=False)
    finally:
        os.close(dest)


def test_memory_does_not_hold_the_history(tmp_path: Path) -> None:
    """Loading a ledger indexes none of its paths; only those asked about are read back."""
    dest = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with Ledger(dest, replay=()) as ledger:
            for i in range(2000):
                ledger.append(make_record(f"d/f{i}.txt", _SHAS[i % 3], f"d/f{i}.txt"))
        ledger = Ledger(dest, replay=())
        try:
            assert ledger._versions == {}
            ledger.prepare(["d/f7.txt", "new.txt"])
            assert set(ledger._versions) <= {"d/f7.txt", "new.txt"}
            assert ledger.stored_version("d/f7.txt", _SHAS[1]) == "d/f7.txt"
            assert ledger.stored_version("d/f8.txt", _SHAS[2]) == "d/f8.txt"  # not prepared
            assert ledger.stored_version("d/f8.txt", _SHAS[1]) is None
        finally:
            ledger.close()
    finally:
        os.close(dest)


def _open(dest: int, summary: Path, replay: tuple[str, ...] = ()) -> Ledger:
    return Ledger(dest, replay=replay, summary=summary)


def test_a_summary_lets_the_next_open_read_only_new_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tree").mkdir()
    summary = tmp_path / "state" / "ledgers" / "s.summary"
    dest = os.open(tmp_path / "tree", os.O_RDONLY | os.O_DIRECTORY)
    try:
        records = [make_record(p, _SHAS[i % 3], p) for i, p in enumerate(_ODD)]
        with _open(dest, summary) as ledger:
            for record in records[:5]:
                ledger.append(record)
        assert summary.exists()
        assert summary.stat().st_mode & 0o777 == 0o600
        # Lines another writer (an older processor, say) appended since are read on from there.
        with Ledger(dest, replay=()) as ledger:
            for record in records[5:8]:
                ledger.append(record)
        parsed: list[bytes] = []
        real_loads = ledger_mod._loads

        def counting(raw: bytes) -> dict[str, Any]:
            parsed.append(raw)
            return real_loads(raw)

        monkeypatch.setattr(ledger_mod, "_loads", counting)
        ledger = _open(dest, summary)
        monkeypatch.undo()
        assert len(parsed) == 3  # only the lines appended since the summary was left
        assert ledger.count == 8
        for record in records[8:]:
            ledger.append(record)
        _check(ledger, _model(records), _ODD)
        ledger.close()
        whole = Ledger(dest, replay=())  # no summary: reads everything
        assert (whole.count, whole._prev) == (len(records), ledger._prev)
        _check(whole, _model(records), _ODD)
        whole.close()
        again = _open(dest, summary)
        assert (again.count, again._prev) == (len(records), ledger._prev)
        _check(again, _model(records), [*_ODD, "never/sent"])
        again.close()
        assert check_chain(read_ledger(dest)) == []
    finally:
        os.close(dest)


@pytest.mark.parametrize(
    "spoil",
    [
        "replaced",  # the ledger is another file now (restored from a backup, say)
        "shortened",  # cut before the summary's offset
        "rewritten",  # same length, other last line
        "garbage",  # the summary itself is damaged
        "small-filter",  # a summary whose filter is too small for the ledger
        "replay",  # a replay needs every record of its uploads: the summary is not used
    ],
)
def test_a_summary_that_does_not_match_is_not_used(tmp_path: Path, spoil: str) -> None:
    (tmp_path / "tree").mkdir()
    summary = tmp_path / "state" / "s.summary"
    dest = os.open(tmp_path / "tree", os.O_RDONLY | os.O_DIRECTORY)
    path = tmp_path / "tree" / ".dittohead" / "ledger.jsonl"
    try:
        first = [make_record(f"a{i}", _SHAS[0], f"a{i}", upload="u1") for i in range(3)]
        other = [make_record(f"b{i}", _SHAS[1], f"b{i}", upload="u2") for i in range(2)]
        with _open(dest, summary) as ledger:
            for record in first:
                ledger.append(record)
        expect = first
        replay: tuple[str, ...] = ()
        if spoil == "replaced":
            path.unlink()
            with Ledger(dest, replay=()) as ledger:
                for record in other:
                    ledger.append(record)
            expect = other
        elif spoil == "shortened":
            lines = path.read_bytes().splitlines(keepends=True)
            path.write_bytes(b"".join(lines[:2]))
            expect = first[:2]
        elif spoil == "rewritten":
            last = read_ledger(dest)[-1]["hash"].encode()
            forged = last[::-1]  # in place: same file, same size, another last line
            path.write_bytes(path.read_bytes().replace(last, forged))
        elif spoil == "garbage":
            summary.write_bytes(b"{not json\n")
        elif spoil == "small-filter":
            head, _, bits = summary.read_bytes().partition(b"\n")
            summary.write_bytes(head.replace(b'"bits": 65536', b'"bits": 8') + b"\n" + bits[:1])
        else:
            replay = ("u1",)
        ledger = _open(dest, summary, replay)
        try:
            assert ledger.count == len(expect)
            assert ledger._prev == read_ledger(dest)[-1]["hash"]
            _check(ledger, _model(expect), [*(f"a{i}" for i in range(3)), "b0"])
            if spoil == "replay":
                assert ledger.recorded("u1", "a1") == ("a1", "stored")
        finally:
            ledger.close(flush=False)
    finally:
        os.close(dest)


def test_a_big_run_does_not_read_the_file_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paths appended in a run are answered from memory: the filter, which holds only what
    was read at start-up, does not fill up with them (it did, and every file re-read the
    ledger). Its summary is dropped once the ledger has outgrown it."""
    (tmp_path / "tree").mkdir()
    summary = tmp_path / "state" / "s.summary"
    dest = os.open(tmp_path / "tree", os.O_RDONLY | os.O_DIRECTORY)
    reads: list[set[str]] = []
    real = Ledger._read_versions

    def counting(self: Ledger, wanted: set[str]) -> None:
        reads.append(wanted)
        real(self, wanted)

    monkeypatch.setattr(Ledger, "_read_versions", counting)
    try:
        with _open(dest, summary) as ledger:
            ledger.append(make_record("first", _SHAS[0], "first"))
        assert summary.exists()
        with _open(dest, summary) as ledger:
            paths = [f"d{i % 10}/f{i}.txt" for i in range(20000)]
            ledger.prepare(paths)
            for path in paths:
                assert ledger.stored_version(path, _SHAS[1]) is None
                ledger.append(make_record(path, _SHAS[1], path))
                if ledger.queued_bytes > 1 << 20:
                    ledger.flush()
        assert sum(len(w) for w in reads) < 50  # the filter's rare false positives only
        assert not summary.exists()  # 20,000 lines outgrew a filter sized for one
        with _open(dest, summary) as ledger:  # reads it all, sizes anew, leaves a summary
            assert ledger.stored_version("d3/f3.txt", _SHAS[1]) == "d3/f3.txt"
        assert summary.exists()
    finally:
        os.close(dest)
