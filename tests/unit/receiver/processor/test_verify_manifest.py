"""The processor reads the manifest's shape itself and vouches for its names through the walk.

`verify._parse_manifest` does not run the name policy on listed paths (the walk has checked every
name it found, and the entry passes only when the manifest lists exactly those). These tests hold
it to `core.manifest.parse_manifest` on everything but names, and show that a manifest whose
names the policy would refuse still gets its entry quarantined with nothing published.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dittohead.core.errors import DittoheadError
from dittohead.core.manifest import parse_manifest
from dittohead.receiver.processor.claim import EntryRejected
from dittohead.receiver.processor.finalize import run_once
from dittohead.receiver.processor.verify import _copy_hashing, _parse_manifest
from tests.support.invariants import ledger_of, tree_files
from tests.support.server import STUDY, Server

_SHA = hashlib.sha256(b"abc").hexdigest()

_values = st.one_of(
    st.integers(-2, 5), st.booleans(), st.none(), st.sampled_from(["", "a.txt", _SHA, "0" * 64])
)
_entries = st.one_of(
    st.fixed_dictionaries(
        {
            "path": st.one_of(st.sampled_from(["a.txt", "d/b.txt", "A.TXT", "./a.txt"]), _values),
            "size": st.one_of(st.integers(0, 4), _values),
            "sha256": st.one_of(st.sampled_from([_SHA, "F" * 64, "0" * 63]), _values),
        }
    ),
    st.dictionaries(st.sampled_from(["path", "size", "sha256", "x"]), _values, max_size=4),
    _values,
)


@st.composite
def _consistent(draw: st.DrawFn) -> dict[str, Any]:
    """Well-formed entries with matching totals: the manifests worth comparing on acceptance."""
    entries = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "path": st.sampled_from(["a.txt", "d/b.txt", "A.TXT", "./a.txt", "../x", "d"]),
                    "size": st.integers(0, 4),
                    "sha256": st.sampled_from([_SHA, "0" * 64, _SHA, "F" * 64]),
                }
            ),
            max_size=4,
            unique_by=lambda e: str(e["path"]),
        )
    )
    return {"files": len(entries), "bytes": sum(e["size"] for e in entries), "entries": entries}


_docs = st.one_of(
    _consistent(),
    st.fixed_dictionaries(
        {
            "files": st.one_of(st.integers(0, 4), _values),
            "bytes": st.one_of(st.integers(0, 12), _values),
            "entries": st.lists(_entries, max_size=4),
        }
    ),
    st.dictionaries(st.sampled_from(["files", "bytes", "entries", "x"]), _values, max_size=4),
)


@given(_docs, st.integers(0, 4))
def test_shape_checks_agree_with_the_core_parser(doc: Any, max_files: int) -> None:
    data = json.dumps(doc).encode()
    try:
        core = parse_manifest(data, max_files=max_files)
    except DittoheadError:
        core = None
    try:
        ours = _parse_manifest(data, max_files)
    except EntryRejected:
        ours = None
    if core is not None:  # everything the core accepts, accepted the same
        assert ours is not None
        assert list(ours.values()) == [(e.path, e.size, e.sha256) for e in core.entries]
        assert list(ours) == [e.path for e in core.entries]
    if ours is None:
        assert core is None  # nothing refused here that the core would accept
    elif core is None:
        # Accepted here but not by the core: only for a name (the walk then refuses the entry),
        # so with every path renamed to a plain distinct one the core accepts it too.
        for i, item in enumerate(doc["entries"]):
            item["path"] = f"f{i}"
        parse_manifest(json.dumps(doc).encode(), max_files=max_files)


@given(_docs, st.integers(0, 4))
def test_shape_refusals_are_worded_as_the_core_words_them(doc: Any, max_files: int) -> None:
    """One rule, one wording (`core.manifest.checked_entries`): with every listed path made a
    plain distinct name, the processor and the core refuse the same manifests in the same words
    (the core adds that nothing was stored)."""
    if isinstance(doc, dict) and isinstance(doc.get("entries"), list):
        for i, item in enumerate(doc["entries"]):
            if isinstance(item, dict) and isinstance(item.get("path"), str):
                item["path"] = f"f{i}"
    data = json.dumps(doc).encode()
    try:
        parse_manifest(data, max_files=max_files)
        core = None
    except DittoheadError as exc:
        core = exc.message
    try:
        _parse_manifest(data, max_files)
        ours = None
    except EntryRejected as exc:
        ours = str(exc)
    assert (core, ours) == (None, None) or core == f"{ours}; nothing was stored"


def test_not_json_is_refused() -> None:
    for data in (b"\xff{", b"{", b"[]"):
        with pytest.raises(EntryRejected, match="manifest is not valid"):
            _parse_manifest(data, 10)


@pytest.mark.parametrize(
    "data",
    [
        # repeated keys: the last one wins, as json.loads has it
        b'{"files":1,"bytes":3,"entries":[{"path":"x","path":"a.txt","size":3,"sha256":"%s"}]}',
        b'{"files":1,"files":1,"bytes":3,"entries":[{"path":"a.txt","size":3,"sha256":"%s"}]}',
        # an entry-shaped top level, and an entry with one key too many
        b'{"path":"a.txt","size":3,"sha256":"%s"}',
        b'{"files":1,"bytes":3,"entries":[{"path":"a.txt","size":3,"sha256":"%s","x":1}]}',
    ],
)
def test_odd_json_is_judged_like_the_core_parser(data: bytes) -> None:
    data = data.replace(b"%s", _SHA.encode())
    try:
        core = [(e.path, e.size, e.sha256) for e in parse_manifest(data).entries]
    except DittoheadError:
        with pytest.raises(EntryRejected):
            _parse_manifest(data, 10)
    else:
        assert list(_parse_manifest(data, 10).values()) == core


def _listing(files: dict[str, bytes], extra: list[dict[str, Any]]) -> dict[str, Any]:
    entries = [
        {"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
        for p, d in files.items()
    ] + extra
    return {
        "files": len(entries),
        "bytes": sum(e["size"] for e in entries),
        "entries": entries,
    }


@pytest.mark.parametrize(
    "listed",
    [
        "../a.txt",  # escapes
        "/etc/passwd",  # absolute
        "./a.txt",  # not in normal form (the file is a.txt)
        "A.txt",  # a case twin of a.txt
        "d",  # a folder of the entry
        "d/",  # empty component
        "CON",  # a Windows device
        "a\\b.txt",  # backslash
        "x\x01.txt",  # control character
        ".dittohead/manifest.json",  # the manifest itself
        "never-sent.txt",  # a good name, but no such file
    ],
)
def test_a_listed_path_the_walk_did_not_find_quarantines_the_entry(
    server: Server, listed: str
) -> None:
    files = {"a.txt": b"abc", "d/b.txt": b"bee"}
    good = server.commit({"ok.txt": b"fine"})
    extra = [{"path": listed, "size": 3, "sha256": _SHA}]
    bad = server.commit(files, manifest=_listing(files, extra))
    summary = run_once(server.config)
    assert summary.quarantined == 1 and summary.stored == 1
    quarantine = server.config.study_dir(STUDY) / "quarantine"
    reason = (quarantine / f"{bad}.reason").read_text()
    assert "listed in the manifest but missing" in reason
    assert tree_files(server.destination) == {"ok.txt": b"fine"}
    assert [r["upload"] for r in ledger_of(server.destination)] == [good]


def test_a_path_listed_twice_quarantines_the_entry(server: Server) -> None:
    files = {"a.txt": b"abc"}
    bad = server.commit(files, manifest=_listing(files, _listing(files, [])["entries"]))
    assert run_once(server.config).quarantined == 1
    reason = (server.config.study_dir(STUDY) / "quarantine" / f"{bad}.reason").read_text()
    assert "appears twice" in reason
    assert tree_files(server.destination) == {}


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 65536, (1 << 20) - 1, 1 << 20, 3 << 20])
@pytest.mark.parametrize("growth", [-1, 0, 1, 5000])
def test_copy_hashing_copies_and_hashes_what_is_there(size: int, growth: int) -> None:
    """Up to `limit` bytes, whatever the file's real size against the expected one."""
    real = max(size + growth, 0)
    data = os.urandom(real)
    limit = size + 1  # as the walker asks: the expected size and one byte to see growth
    with tempfile.TemporaryDirectory() as tmp:
        src_path, dst_path = Path(tmp, "src"), Path(tmp, "dst")
        src_path.write_bytes(data)
        src = os.open(src_path, os.O_RDONLY)
        dst = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            digest, copied = _copy_hashing(src, dst, limit, bytearray(1 << 20))
        finally:
            os.close(src)
            os.close(dst)
        want = data[:limit]
        assert copied == len(want)
        assert digest == hashlib.sha256(want).hexdigest()
        assert dst_path.read_bytes() == want
