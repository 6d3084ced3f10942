"""The ledger's in-memory indexes: compact, and answering exactly what the plain model would.

`Ledger` keeps, per path, just the sha256 when its one content is stored under the path itself
(a dict only otherwise), and remembers (upload, path) only for the uploads it was told may be
replayed. Checked against a plain model (path -> {sha256: first stored_as}), for records appended
in this run and for the same records loaded back from the file.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dittohead.core.errors import OutOfSpace
from dittohead.receiver.processor.ledger import Ledger, check_chain, read_ledger
from tests.support.ledger import make_record

_PATHS = ["a.txt", "d/b.txt", "c"]
_SHAS = ["1" * 64, "2" * 64, "3" * 64]


_steps = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", "u3"]),
        st.sampled_from(_PATHS),
        st.sampled_from(_SHAS),
        st.sampled_from(["same", "~2", "~3"]),
        st.sampled_from(["stored", "duplicate"]),
    ),
    max_size=12,
)


@given(_steps, st.sets(st.sampled_from(["u1", "u2", "u3"])))
def test_indexes_answer_like_the_plain_model(
    steps: list[tuple[str, ...]], replay: set[str]
) -> None:
    versions: dict[str, dict[str, str]] = {}
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    records = []
    for upload, path, sha, where, outcome in steps:
        stored_as = path if where == "same" else f"{path}{where}"
        records.append(
            make_record(
                path,
                sha,
                stored_as,
                upload=upload,
                outcome="stored" if outcome == "stored" else "duplicate",
            )
        )
        versions.setdefault(path, {}).setdefault(sha, stored_as)
        seen[(upload, path)] = (stored_as, records[-1].outcome)

    def check(ledger: Ledger) -> None:
        for path in _PATHS:
            for sha in _SHAS:
                assert ledger.stored_version(path, sha) == versions.get(path, {}).get(sha)
            for upload in ("u1", "u2", "u3"):
                want = seen.get((upload, path)) if upload in replay else None
                assert ledger.recorded(upload, path) == want

    with tempfile.TemporaryDirectory() as tmp:
        dest = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            ledger = Ledger(dest, replay=replay)
            for record in records:
                ledger.append(record)
            check(ledger)  # appended in this run
            ledger.close()
            ledger = Ledger(dest, replay=replay)
            assert ledger.count == len(records)
            check(ledger)  # loaded back from the file
            ledger.close()
        finally:
            os.close(dest)


def test_a_failed_flush_keeps_the_queue_which_can_still_grow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ledger = Ledger(dest, replay=())
        ledger.append(make_record("a.txt", _SHAS[0], "a.txt"))
        real_write = os.write
        calls = []

        def half_then_full(fd: int, data: Any) -> int:
            calls.append(1)
            if len(calls) == 1:
                return real_write(fd, bytes(data)[:10])  # part of the line reaches the disk
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr("dittohead.receiver.processor.ledger.os.write", half_then_full)
        with pytest.raises(OutOfSpace):
            ledger.flush()
        monkeypatch.undo()
        assert (tmp_path / ".dittohead" / "ledger.jsonl").read_bytes() == b""  # cut back
        ledger.append(make_record("b.txt", _SHAS[1], "b.txt"))  # queue grows
        ledger.close()
        docs = read_ledger(dest)
        assert [d["path"] for d in docs] == ["a.txt", "b.txt"]
        assert check_chain(docs) == []
    finally:
        os.close(dest)
