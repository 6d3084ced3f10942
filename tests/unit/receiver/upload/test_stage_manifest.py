"""The receiver's manifest check: the fast comparison (each name checked once, as a tar member)
never accepts what the full check (`verify_manifest`: parse_manifest, names again) refuses,
and an honest manifest takes the fast path."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dittohead.core.errors import DittoheadError
from dittohead.core.manifest import Manifest, ManifestEntry
from dittohead.receiver.upload.stage import manifest_lists_exactly, verify_manifest

MAX_FILES = 8
#: names that pass the policy together (as they would have as tar members)
POOL = ["a.txt", "b/c.bin", "b/d", "É/f", "x y/z/w.dat", "one"]
CONTENTS = [b"", b"x", b"hello", b"\0" * 600]


def _written(picks: list[tuple[int, int]]) -> dict[str, tuple[int, str]]:
    return {
        POOL[name]: (len(CONTENTS[body]), hashlib.sha256(CONTENTS[body]).hexdigest())
        for name, body in picks
    }


def _honest(written: dict[str, tuple[int, str]]) -> dict[str, Any]:
    entries = [{"path": p, "size": s, "sha256": h} for p, (s, h) in written.items()]
    return {"files": len(entries), "bytes": sum(s for s, _ in written.values()), "entries": entries}


def _mutate(doc: dict[str, Any], how: str, index: int) -> dict[str, Any] | list[Any]:
    doc = copy.deepcopy(doc)
    entries: list[dict[str, Any]] = doc["entries"]
    item = entries[index % len(entries)] if entries else None
    if not isinstance(item, dict) or not isinstance(item["path"], str):
        item = None  # an earlier mutation made it a list, or its path not a string
    elif not isinstance(item["size"], int):
        item = None
    if how == "shuffle":
        entries.reverse()
    elif how == "drop" and entries:
        del entries[index % len(entries)]
    elif how == "duplicate" and item is not None:
        entries.append(dict(item))
    elif how == "dot-slash" and item is not None:
        item["path"] = "./" + item["path"]
    elif how == "case" and item is not None:
        item["path"] = item["path"].upper()
    elif how == "escape" and item is not None:
        item["path"] = "../" + item["path"]
    elif how == "unknown" and item is not None:
        item["path"] = "never-sent"
    elif how == "path-type" and item is not None:
        item["path"] = 7
    elif how == "size+1" and item is not None:
        item["size"] += 1
    elif how == "size-float" and item is not None:
        item["size"] = float(item["size"])
    elif how == "size-bool" and item is not None:
        item["size"] = bool(item["size"])
    elif how == "size-str" and item is not None:
        item["size"] = str(item["size"])
    elif how == "sha-upper" and item is not None:
        item["sha256"] = item["sha256"].upper()
    elif how == "sha-other" and item is not None:
        item["sha256"] = "0" * 64
    elif how == "sha-short" and item is not None:
        item["sha256"] = item["sha256"][:-1]
    elif how == "extra-key" and item is not None:
        item["mode"] = 420
    elif how == "doc-key":
        doc["version"] = 1
    elif how == "files+1":
        doc["files"] += 1
    elif how == "files-float":
        doc["files"] = float(doc["files"])
    elif how == "files-bool":
        doc["files"] = bool(doc["files"])
    elif how == "bytes+1":
        doc["bytes"] += 1
    elif how == "bytes-float":
        doc["bytes"] = float(doc["bytes"])
    elif how == "entries-dict":
        doc["entries"] = {"x": 1}
    elif how == "not-a-dict":
        return [doc]
    elif how == "entry-list" and item is not None:
        entries[index % len(entries)] = list(item.items())  # type: ignore[call-overload]
    return doc


MUTATIONS = [
    *("shuffle", "drop", "duplicate", "dot-slash", "case", "escape", "unknown", "path-type"),
    *("size+1", "size-float", "size-bool", "size-str", "sha-upper", "sha-other", "sha-short"),
    *("extra-key", "doc-key", "files+1", "files-float", "files-bool", "bytes+1", "bytes-float"),
    *("entries-dict", "not-a-dict", "entry-list"),
]


def _full_verdict(data: bytes, written: dict[str, tuple[int, str]]) -> str | None:
    try:
        verify_manifest(data, written, max_files=MAX_FILES)
    except DittoheadError as exc:
        return exc.message
    return None


@given(
    st.lists(
        st.tuples(st.integers(0, len(POOL) - 1), st.integers(0, len(CONTENTS) - 1)),
        max_size=len(POOL),
        unique_by=lambda pick: pick[0],
    ),
    st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 10)), max_size=3),
)
@example([(0, 1), (1, 2)], [("shuffle", 0)])
@example([(0, 1), (1, 1)], [("drop", 0), ("duplicate", 0)])
@example([(0, 1)], [("dot-slash", 0)])
@example([(5, 1)], [("size-bool", 0)])
def test_the_fast_check_never_accepts_what_the_full_check_refuses(
    picks: list[tuple[int, int]], mutations: list[tuple[str, int]]
) -> None:
    written = _written(picks)
    doc: dict[str, Any] | list[Any] = _honest(written)
    for how, index in mutations:
        if isinstance(doc, dict) and isinstance(doc["entries"], list):
            doc = _mutate(doc, how, index)
    data = json.dumps(doc, ensure_ascii=False).encode("utf-8")
    full = _full_verdict(data, written)
    if manifest_lists_exactly(data, written):
        assert full is None, full
    if not mutations:
        assert manifest_lists_exactly(data, written)


def test_the_clients_own_manifest_takes_the_fast_path() -> None:
    written = _written([(0, 1), (1, 2), (3, 3), (4, 0)])
    manifest = Manifest.of(ManifestEntry(p, s, h) for p, (s, h) in written.items())
    assert manifest_lists_exactly(manifest.to_json(), written)
    assert _full_verdict(manifest.to_json(), written) is None


@pytest.mark.parametrize(
    "data",
    [b"\xff", b"not json", b"[]", json.dumps({"files": 0, "bytes": 0, "entries": []}).encode()],
)
def test_odd_documents_go_to_the_full_check(data: bytes) -> None:
    written = _written([(0, 1)])
    assert not manifest_lists_exactly(data, written)
    assert _full_verdict(data, written) is not None


def test_a_listed_file_that_did_not_arrive_is_still_reported_as_before() -> None:
    written = _written([(0, 1)])
    doc = _honest(_written([(0, 1), (1, 2)]))
    data = json.dumps(doc).encode()
    assert not manifest_lists_exactly(data, written)
    assert _full_verdict(data, written) == (
        "incomplete upload: 'b/c.bin' listed in the manifest did not arrive; nothing was "
        "stored. Send again"
    )
