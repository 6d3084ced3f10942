"""ManifestWriter: the manifest built entry by entry is, byte for byte, the one `Manifest.to_json`
writes from the same entries (json.dumps), and reads back as those entries."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dittohead.core.manifest import Manifest, ManifestEntry, ManifestWriter, parse_manifest

# Any text the JSON encoder must escape or pass through: quotes, backslashes, control
# characters, non-ASCII, astral characters (not surrogates: no name can hold one, and
# `to_json` cannot encode them as UTF-8 either).
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
_ENTRIES = st.lists(
    st.tuples(
        _TEXT, st.integers(min_value=0, max_value=2**70), st.binary(min_size=32, max_size=32)
    ),
    max_size=12,
)


def _written(entries: list[tuple[str, int, bytes]]) -> Manifest:
    writer = ManifestWriter(len(entries), sum(size for _, size, _ in entries))
    for path, size, digest in entries:
        writer.add(path, size, digest)
    return writer.finish()


@given(_ENTRIES)
def test_the_writer_writes_what_json_dumps_writes(entries: list[tuple[str, int, bytes]]) -> None:
    reference = Manifest.of(ManifestEntry(p, s, d.hex()) for p, s, d in entries)
    written = _written(entries)
    assert written.to_json() == reference.to_json()
    assert (written.file_count, written.byte_count) == (reference.file_count, reference.byte_count)
    # its entries, read back from its JSON when asked for, are the same
    assert written == reference
    assert written.entries == reference.entries
    assert hash(written) == hash(reference)


def test_the_written_manifest_passes_the_strict_parser() -> None:
    data = [b"", b"x", b"\0" * 700]
    entries = [("a.txt", data[0]), ("b/É.dat", data[1]), ("b/c d/e", data[2])]
    writer = ManifestWriter(3, sum(len(d) for _, d in entries))
    for path, body in entries:
        writer.add(path, len(body), hashlib.sha256(body).digest())
    manifest = writer.finish()
    assert parse_manifest(manifest.to_json()) == manifest
    assert manifest.by_path()["b/É.dat"].sha256 == hashlib.sha256(b"x").hexdigest()


def test_the_totals_given_first_must_be_the_entries_totals() -> None:
    writer = ManifestWriter(2, 10)
    writer.add("a", 10, bytes(32))
    with pytest.raises(ValueError, match="1 files of 10 bytes"):
        writer.finish()
    writer = ManifestWriter(1, 10)
    writer.add("a", 9, bytes(32))
    with pytest.raises(ValueError):
        writer.finish()


def test_an_empty_manifest() -> None:
    assert ManifestWriter(0, 0).finish().to_json() == b'{"files":0,"bytes":0,"entries":[]}'
    assert ManifestWriter(0, 0).finish() == Manifest.of([])
