"""Ledger records for tests: one shape, with only what a test varies as arguments."""

from __future__ import annotations

from dittohead.receiver.processor.ledger import Outcome, Record


def make_record(
    path: str, sha256: str, stored_as: str, *, upload: str = "u1", outcome: Outcome = "stored"
) -> Record:
    """A record of `path` (content `sha256`, stored as `stored_as`) from `upload`."""
    return Record(
        upload=upload,
        uploader="alice",
        uid=1000,
        source="brogden-a",
        path=path,
        stored_as=stored_as,
        size=1,
        sha256=sha256,
        outcome=outcome,
        received_at="2026-11-24T00:00:00Z",
        recorded_at="2026-11-24T00:00:01Z",
    )
