"""The manifest: strict parsing, totals and names checked."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dittohead.core.errors import UploadRejected
from dittohead.core.manifest import (
    Manifest,
    ManifestEntry,
    checked_entries,
    load_manifest,
    parse_manifest,
)


def entry(path: str, data: bytes) -> ManifestEntry:
    return ManifestEntry(path, len(data), hashlib.sha256(data).hexdigest())


# Windows device names ("con.txt", a folder "aux") are refused by the name policy, rightly;
# the round trip is about the encoding, so the generator leaves them out.
_DEVICES = {"con", "prn", "aux", "nul"}
_PATHS = st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8}){0,2}\.txt", fullmatch=True).filter(
    lambda p: not any(part.split(".")[0] in _DEVICES for part in p.split("/"))
)


@given(st.dictionaries(_PATHS, st.binary(max_size=64), max_size=20))
def test_round_trip(files: dict[str, bytes]) -> None:
    # Generated names can collide as file-vs-folder ("a.txt" is never a folder, so they cannot).
    manifest = Manifest.of(entry(p, d) for p, d in files.items())
    assert parse_manifest(manifest.to_json()) == manifest


def good() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(Manifest.of([entry("a.txt", b"x")]).to_json())
    return doc


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda d: d.update(files=2), "totals"),
        (lambda d: d.update(bytes=0), "totals"),
        (lambda d: d.update(extra=1), "exactly the keys"),
        (lambda d: d["entries"][0].update(sha256="ZZ" * 32), "64 lower-case hex"),
        (lambda d: d["entries"][0].update(size=-1), "wrong type"),
        (lambda d: d["entries"][0].update(size=True), "wrong type"),
        (lambda d: d["entries"][0].update(path="../x"), "'..'"),
        (lambda d: d["entries"].append(dict(d["entries"][0])), "appears twice"),
    ],
)
def test_bad_manifests_are_refused(change: object, why: str) -> None:
    doc = good()
    change(doc)  # type: ignore[operator]
    with pytest.raises(UploadRejected) as info:
        parse_manifest(json.dumps(doc).encode())
    assert why in info.value.message


def test_not_json_and_too_many_files() -> None:
    with pytest.raises(UploadRejected, match="not JSON"):
        parse_manifest(b"\xff{")
    with pytest.raises(UploadRejected, match="more than 0 files"):
        parse_manifest(Manifest.of([entry("a", b"")]).to_json(), max_files=0)


def test_each_entry_is_judged_whole_before_the_next() -> None:
    """`checked_entries` yields an entry before looking at the next, so a bad name is reported
    before a bad sha256 further on, and either before the totals."""
    doc = good()
    doc["entries"][0]["sha256"] = "ZZ"
    doc["entries"].insert(0, {"path": "../x", "size": 0, "sha256": "0" * 64})
    doc["files"] = 7
    with pytest.raises(UploadRejected) as info:
        parse_manifest(json.dumps(doc).encode())
    assert "'..'" in info.value.message


def test_the_shape_check_takes_its_entries_as_dicts_or_as_parsed_tuples() -> None:
    """`load_manifest(..., entries_as_tuples=True)` (the processor's) gives the same entries,
    and the same refusals, as plain JSON objects."""
    data = Manifest.of([entry("a.txt", b"x"), entry("b/c", b"")]).to_json()
    for as_tuples in (False, True):
        doc = load_manifest(data, UploadRejected, entries_as_tuples=as_tuples)
        assert list(checked_entries(doc, UploadRejected)) == [
            ("a.txt", 1, hashlib.sha256(b"x").hexdigest()),
            ("b/c", 0, hashlib.sha256(b"").hexdigest()),
        ]
        with pytest.raises(UploadRejected, match="more than 1 files"):
            list(checked_entries(doc, UploadRejected, 1))
    bad = data.replace(b'"size":1', b'"size":-1')
    for as_tuples in (False, True):
        doc = load_manifest(bad, UploadRejected, entries_as_tuples=as_tuples)
        with pytest.raises(UploadRejected, match="wrong type"):
            list(checked_entries(doc, UploadRejected))
