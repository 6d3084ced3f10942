"""A journal entry written in pieces is the JSON document written whole, and reads back."""

from __future__ import annotations

import json

import pytest

from dittohead.receiver.processor.journal import JournalEntry
from dittohead.receiver.processor.verify import StagedFile


def _entry(n: int) -> JournalEntry:
    return JournalEntry(
        entry="brogden-a-20261124T000000Z-0123456789abcdef",
        study="nccam3",
        step="staged",
        uid=1000,
        received_at="2026-11-24T00:00:00Z",
        dev=2049,
        ino=12,
        files=[
            StagedFile(f'd{i % 7}/f\u00e9 "{i}".txt', i, f"{i:064x}", f"{i:08d}", 1000 + i)
            for i in range(n)
        ],
        dirs=[f"d{i}" for i in range(7)],
    )


@pytest.mark.parametrize("n", [0, 1, 2047, 2048, 2049, 5000])
def test_pieces_make_the_whole_document_and_read_back(n: int) -> None:
    item = _entry(n)
    whole = {
        "entry": item.entry,
        "study": item.study,
        "step": item.step,
        "uid": item.uid,
        "received_at": item.received_at,
        "dev": item.dev,
        "ino": item.ino,
        "files": [
            {"path": f.path, "size": f.size, "sha256": f.sha256, "staged": f.staged, "ino": f.ino}
            for f in item.files
        ],
        "dirs": item.dirs,
    }
    assert json.loads(item.to_json()) == whole
    assert JournalEntry.from_json(item.to_json()) == item
