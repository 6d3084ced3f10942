"""The receiver's record of the files it wrote (`Written`) and its byte-exact manifest check
(`ManifestCheck`, fed the manifest as it arrives, in pieces of any size): a manifest that is,
byte for byte, what the client writes for those files is accepted without being held or
parsed; it never accepts what the parsing checks (`manifest_lists_exactly`, then
`verify_manifest`) would refuse, and every other manifest is handed to them whole, as it
arrived."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from unittest.mock import patch

from hypothesis import example, given
from hypothesis import strategies as st

from dittohead.core.manifest import json_pieces
from dittohead.receiver.upload import stage
from dittohead.receiver.upload.stage import ManifestCheck, Written, manifest_lists_exactly
from tests.unit.receiver.upload.test_stage_manifest import (
    CONTENTS,
    MUTATIONS,
    POOL,
    _full_verdict,
    _honest,
    _mutate,
    _written,
)

_PICKS = st.lists(
    st.tuples(st.integers(0, len(POOL) - 1), st.integers(0, len(CONTENTS) - 1)),
    max_size=len(POOL),
    unique_by=lambda pick: pick[0],
)


def _record(picks: list[tuple[int, int]]) -> tuple[Written, int]:
    written = Written()
    for name, body in picks:
        data = CONTENTS[body]
        written.add(POOL[name], len(data), hashlib.sha256(data).digest())
    return written, sum(len(CONTENTS[body]) for _, body in picks)


def _check(
    written: Written, total: int, data: bytes, cuts: list[int] | None = None, block: int = 1
) -> bytes | None:
    """Feed `data` to a ManifestCheck cut at `cuts` (sorted offsets), comparing blocks of
    `block` bytes or more (a piece at a time by default); its verdict."""
    with patch.object(stage, "MANIFEST_BLOCK_BYTES", block):
        check = ManifestCheck(written, total)
    start = 0
    for cut in [*(cuts or []), len(data)]:
        end = max(start, min(cut, len(data)))
        check.feed(memoryview(data)[start:end])
        start = end
    return check.unless_exact()


def _exact(
    written: Written, total: int, data: bytes, cuts: list[int] | None = None, block: int = 1
) -> bool:
    kept = _check(written, total, data, cuts, block)
    assert kept is None or kept == data  # anything not exact is handed on exactly as it came
    return kept is None


def _compact(doc: object) -> bytes:
    # the client's spelling: no spaces, non-ASCII as UTF-8
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@given(_PICKS)
def test_the_record_holds_what_was_written(picks: list[tuple[int, int]]) -> None:
    written, _ = _record(picks)
    assert len(written) == len(picks)
    assert written.by_path() == _written(picks)


@given(_PICKS)
def test_the_clients_manifest_is_recognised(picks: list[tuple[int, int]]) -> None:
    written, total = _record(picks)
    files = [(POOL[name], len(CONTENTS[body])) for name, body in picks]
    digests = b"".join(hashlib.sha256(CONTENTS[body]).digest() for _, body in picks)
    manifest = b"".join(json_pieces(files, digests, len(files), total))
    assert _exact(written, total, manifest)
    assert _exact(written, total, manifest, list(range(0, len(manifest), 7)))
    assert manifest == _compact(_honest(_written(picks)))


@given(
    _PICKS,
    st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 10)), max_size=3),
    st.booleans(),
    st.lists(st.integers(0, 1000), max_size=6).map(sorted),
    st.sampled_from([1, 50, 64 * 1024]),
)
@example([(0, 1), (1, 2)], [("shuffle", 0)], True, [], 1)
@example([(0, 1), (1, 1)], [("drop", 0), ("duplicate", 0)], True, [], 1)
@example([(3, 1)], [("case", 0)], True, [], 50)
@example([(0, 1)], [], False, [], 1)
def test_the_exact_check_never_accepts_what_the_parsing_checks_refuse(
    picks: list[tuple[int, int]],
    mutations: list[tuple[str, int]],
    compact: bool,
    cuts: list[int],
    block: int,
) -> None:
    written, total = _record(picks)
    as_dict = written.by_path()
    doc: dict[str, Any] | list[Any] = _honest(as_dict)
    for how, index in mutations:
        if isinstance(doc, dict) and isinstance(doc["entries"], list):
            doc = _mutate(doc, how, index)
    data = _compact(doc) if compact else json.dumps(doc, ensure_ascii=False).encode("utf-8")
    if _exact(written, total, data, cuts, block):
        assert manifest_lists_exactly(data, as_dict)
        assert _full_verdict(data, as_dict) is None
    if compact and not mutations:
        assert _exact(written, total, data, cuts, block)


def test_any_byte_changed_is_not_exact() -> None:
    written, total = _record([(0, 1), (2, 3), (4, 2)])
    data = _compact(_honest(written.by_path()))
    assert _exact(written, total, data)
    assert not _exact(written, total + 1, data)
    for i in range(len(data)):
        changed = data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]
        for block in (1, 100, 64 * 1024):
            assert not _exact(written, total, changed, [i - 1, i, i + 1], block), i
            assert not _exact(written, total, data[:i], [i // 2], block), i  # cut short
    assert not _exact(written, total, data + b" ")
    assert not _exact(written, total, data + data, [len(data)])
    assert _check(written, total, b"") == b""
