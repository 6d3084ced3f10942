"""The ledger's history is not held in memory: a filter of its paths, and one read of the file
for the paths an entry brings (`Ledger.prepare`). Its answers must be those of a plain model
built from every record, whatever the paths look like and however a line is spelt."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dittohead.receiver.ledger import Ledger, Record

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


def _record(path: str, sha: str, stored_as: str, upload: str = "u1") -> Record:
    return Record(
        upload=upload,
        uploader="alice",
        uid=1000,
        source="brogden-a",
        path=path,
        stored_as=stored_as,
        size=1,
        sha256=sha,
        outcome="stored",
        received_at="2026-11-24T00:00:00Z",
        recorded_at="2026-11-24T00:00:01Z",
    )


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
    records = [_record(p, sha, p + where) for p, sha, where in steps]
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
                more = [_record(p, _SHAS[2], p + "~9") for p in _ODD[:4]]
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
            ledger.append(_record("plain.txt", _SHAS[0], "plain.txt"))
        path = tmp_path / ".dittohead" / "ledger.jsonl"
        base = json.loads(path.read_bytes())
        odd = [
            json.dumps({**base, "path": "spaced.txt", "stored_as": "spaced~2.txt"}),
            json.dumps({**base, "path": "esc.txt"}, sort_keys=True).replace('"esc', '"\\u0065sc'),
            json.dumps(dict(reversed(list({**base, "path": "rev.txt"}.items())))),
        ]
        with path.open("a") as fh:
            fh.write("\n".join(odd) + "\n")
        ledger = Ledger(dest, replay=())
        try:
            ledger.prepare(["spaced.txt", "esc.txt", "rev.txt", "plain.txt"])
            assert ledger.stored_version("spaced.txt", _SHAS[0]) == "spaced~2.txt"
            assert ledger.stored_version("esc.txt", _SHAS[0]) == "plain.txt"
            assert ledger.stored_version("rev.txt", _SHAS[0]) == "plain.txt"
            assert ledger.stored_version("plain.txt", _SHAS[0]) == "plain.txt"
            assert ledger.count == 4
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
                ledger.append(_record(f"d/f{i}.txt", _SHAS[i % 3], f"d/f{i}.txt"))
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
