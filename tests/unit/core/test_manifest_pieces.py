"""json_pieces: the manifest written piece by piece from the files and their raw digests is,
byte for byte, the one `Manifest.to_json` writes from the same entries (json.dumps), and a
Manifest known by it reads back as those entries."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dittohead.core.manifest import Manifest, ManifestEntry, json_pieces, parse_manifest

# Any text the JSON encoder must escape or pass through: quotes, backslashes, control
# characters, non-ASCII, astral characters (not surrogates: no name can hold one, and
# `to_json` cannot encode them as UTF-8 either).
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
_ENTRIES = st.lists(
    st.tuples(_TEXT, st.integers(0, 2**70), st.binary(min_size=32, max_size=32)),
    max_size=12,
)


def _written(entries: list[tuple[str, int, bytes]]) -> Manifest:
    files = [(path, size) for path, size, _ in entries]
    digests = b"".join(digest for _, _, digest in entries)
    count, total = len(files), sum(size for _, size in files)
    return Manifest.of_json(
        lambda: b"".join(json_pieces(files, digests, count, total)), count, total
    )


@given(_ENTRIES)
def test_the_pieces_are_what_json_dumps_writes(entries: list[tuple[str, int, bytes]]) -> None:
    reference = Manifest.of(ManifestEntry(p, s, d.hex()) for p, s, d in entries)
    written = _written(entries)
    assert written.to_json() == reference.to_json()
    assert (written.file_count, written.byte_count) == (reference.file_count, reference.byte_count)
    # its entries, read back from its JSON when asked for, are the same
    assert written == reference
    assert written.entries == reference.entries
    assert hash(written) == hash(reference)


def test_the_manifest_passes_the_strict_parser() -> None:
    data = [b"", b"x", b"\0" * 700]
    entries = [("a.txt", data[0]), ("b/É.dat", data[1]), ("b/c d/e", data[2])]
    manifest = _written([(p, len(d), hashlib.sha256(d).digest()) for p, d in entries])
    assert parse_manifest(manifest.to_json()) == manifest
    assert manifest.by_path()["b/É.dat"].sha256 == hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize(
    ("files", "digests", "count", "total"),
    [
        ([("a", 10)], bytes(32), 2, 10),  # fewer files than the totals say
        ([("a", 9)], bytes(32), 1, 10),  # fewer bytes
        ([("a", 10)], bytes(64), 1, 10),  # a digest too many
        ([("a", 10), ("b", 0)], bytes(33), 2, 10),  # a digest short
    ],
)
def test_the_totals_given_first_must_be_the_entries_totals(
    files: list[tuple[str, int]], digests: bytes, count: int, total: int
) -> None:
    with pytest.raises(ValueError, match="its totals say"):
        b"".join(json_pieces(files, digests, count, total))


def test_an_empty_manifest() -> None:
    assert b"".join(json_pieces([], b"", 0, 0)) == b'{"files":0,"bytes":0,"entries":[]}'
    assert Manifest.of_json(lambda: b"".join(json_pieces([], b"", 0, 0)), 0, 0) == Manifest.of([])
