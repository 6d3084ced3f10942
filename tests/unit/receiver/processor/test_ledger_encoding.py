"""The ledger's line encoder: byte for byte the canonical form, and a chain `check_chain` accepts.

`encode_line` builds each line with one JSON encoding instead of two; these tests hold it to the
plain definition (sha256 over ``prev`` and the canonical body, then the canonical body with
``hash`` added), for any text the records may carry.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dittohead.receiver.processor.ledger import GENESIS, Record, check_chain, encode_line


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def _reference(seq: int, prev: str, record: Record) -> tuple[bytes, str]:
    body = {"seq": seq, **record.body(), "prev": prev}
    digest = hashlib.sha256(prev.encode() + b"\n" + _canonical(body)).hexdigest()
    return _canonical({**body, "hash": digest}) + b"\n", digest


_text = st.text(st.characters(codec="utf-8"), max_size=40)
_records = st.builds(
    Record,
    upload=_text,
    uploader=_text,
    uid=st.integers(0, 2**32),
    source=_text,
    path=_text,
    stored_as=_text,
    size=st.integers(0, 2**62),
    sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
    outcome=st.sampled_from(["stored", "duplicate"]),
    received_at=_text,
    recorded_at=_text,
)


@given(st.lists(_records, min_size=1, max_size=5))
def test_lines_are_the_canonical_encoding_and_chain(records: list[Record]) -> None:
    prev = GENESIS
    docs = []
    for seq, record in enumerate(records, start=1):
        line, digest = encode_line(seq, prev, record)
        assert (line, digest) == _reference(seq, prev, record)
        doc = json.loads(line)
        assert doc["hash"] == digest and doc["prev"] == prev
        docs.append(doc)
        prev = digest
    assert check_chain(docs) == []
