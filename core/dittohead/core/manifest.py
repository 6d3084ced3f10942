"""The manifest: the last member of every upload, and the proof that it is complete.

A truncated tar stream can look like a shorter valid archive, so the client ends every upload
with ``.dittohead/manifest.json`` listing every file with its size and sha256; the receiver
checks each file it wrote against it, and the processor re-hashes every byte against it again.
"""

from __future__ import annotations

import json
import re
from binascii import hexlify
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from dittohead.core.errors import NameRejected, UploadRejected
from dittohead.core.names import NameSet, check_path

MANIFEST_PATH = ".dittohead/manifest.json"
MANIFEST_DIR = ".dittohead"
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One listed file."""

    path: str
    size: int
    sha256: str


class Manifest:
    """Every file of an upload with its size and sha256 (`entries`), and their totals.

    Made from its entries, or (`of_json`) from its totals and a function that writes its JSON
    (`json_pieces`), whose entries are then read back only if someone asks for them: the
    client that sent 50,000 files needs the manifest's totals, not 50,000 objects nor the
    JSON held. Two manifests are equal when their entries are.
    """

    __slots__ = ("_bytes", "_entries", "_files", "_json")

    def __init__(self, entries: tuple[ManifestEntry, ...]) -> None:
        self._entries: tuple[ManifestEntry, ...] | None = entries
        self._json: Callable[[], bytes] | None = None
        self._files = len(entries)
        self._bytes = sum(e.size for e in entries)

    @classmethod
    def of(cls, entries: Iterable[ManifestEntry]) -> Manifest:
        return cls(tuple(entries))

    @classmethod
    def of_json(cls, write: Callable[[], bytes], file_count: int, byte_count: int) -> Manifest:
        """The manifest whose `to_json` is what `write` returns, with these totals."""
        manifest = cls(())
        manifest._entries, manifest._json = None, write
        manifest._files, manifest._bytes = file_count, byte_count
        return manifest

    @property
    def entries(self) -> tuple[ManifestEntry, ...]:
        if self._entries is None:
            assert self._json is not None
            doc = load_manifest(self._json(), _bad, entries_as_tuples=True)
            self._entries = tuple(ManifestEntry(*e) for e in checked_entries(doc, _bad))
        return self._entries

    @property
    def file_count(self) -> int:
        return self._files

    @property
    def byte_count(self) -> int:
        return self._bytes

    def to_json(self) -> bytes:
        if self._json is not None:
            return self._json()
        doc = {
            "files": self.file_count,
            "bytes": self.byte_count,
            "entries": [{"path": e.path, "size": e.size, "sha256": e.sha256} for e in self.entries],
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def by_path(self) -> dict[str, ManifestEntry]:
        return {e.path: e for e in self.entries}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return self.entries == other.entries

    def __hash__(self) -> int:
        return hash(self.entries)

    def __repr__(self) -> str:
        return f"Manifest(entries={self.entries!r})"


# `Manifest.to_json` as the client writes it, piece by piece: json.dumps with
# ensure_ascii=False and no spaces writes exactly these bytes (tests compare the two). The
# client writes its manifest from the files it sent and their digests, and the receiver
# rebuilds it from what it wrote to recognise a manifest that lists exactly that.
def json_head(file_count: int, byte_count: int) -> bytes:
    """Everything before the first entry."""
    return b'{"files":%d,"bytes":%d,"entries":[' % (file_count, byte_count)


#: one entry (path, size, the raw 32-byte digest in hex), and every later one with its comma
_ENTRY = b'{"path":%b,"size":%d,"sha256":"%b"}'
_NEXT_ENTRY = b"," + _ENTRY

#: what follows the last entry
JSON_TAIL = b"]}"


def in_blocks(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """`pieces` joined into blocks of about `size` bytes (the last may be shorter): a manifest
    written, hashed or compared a block at a time, not two small pieces per file."""
    block = bytearray()
    for piece in pieces:
        block += piece
        if len(block) >= size:
            yield bytes(block)
            block.clear()
    if block:
        yield bytes(block)


def json_pieces(
    files: Iterable[tuple[str, int]], digests: bytes | bytearray, file_count: int, byte_count: int
) -> Iterator[bytes]:
    """The manifest of `files` (path, size), whose raw sha256 digests are `digests` (32 bytes
    each, in the same order), in pieces: `Manifest.to_json` of the same entries.

    A sender keeps 32 bytes per file instead of the manifest (~140 bytes per file) or an
    object per file, and writes it out piece by piece at the end. The totals come first, so
    they are given (the caller knows them); a manifest whose entries do not add up to them is
    refused (ValueError) after its last entry.
    """
    yield json_head(file_count, byte_count)
    count = total = 0
    entry = _ENTRY  # one piece per entry (its comma included): half the pieces of two
    for path, size in files:
        yield entry % (
            encode_basestring(path).encode("utf-8"),
            size,
            hexlify(digests[32 * count : 32 * count + 32]),
        )
        entry = _NEXT_ENTRY
        count += 1
        total += size
    if (count, total, len(digests)) != (file_count, byte_count, 32 * count):
        raise ValueError(
            f"the manifest lists {count} files of {total} bytes with {len(digests)} bytes of "
            f"digests, not the {file_count} files of {byte_count} bytes its totals say"
        )
    yield JSON_TAIL


def _bad(why: str) -> UploadRejected:
    return UploadRejected(f"the upload's manifest is not valid ({why}); nothing was stored")


def parse_manifest(data: bytes, *, max_files: int | None = None) -> Manifest:
    """Parse and check a manifest strictly; raise `UploadRejected` on anything odd."""
    names = NameSet()
    entries: list[ManifestEntry] = []
    for path, size, digest in checked_entries(load_manifest(data, _bad), _bad, max_files):
        try:
            checked = check_path(path)
            names.add_file(path)
        except NameRejected as exc:
            raise _bad(exc.message) from None
        if checked != path:
            raise _bad(f"{path!r} is not in normal form")
        entries.append(ManifestEntry(path, size, digest))
    return Manifest(tuple(entries))


#: one listed file: (path, size, sha256)
Listed = tuple[str, int, str]
#: makes the exception for a manifest that is not valid, from the reason in words
Refusal = Callable[[str], Exception]

_DOC_KEYS = {"files", "bytes", "entries"}
_ENTRY_KEYS = {"path", "size", "sha256"}


def load_manifest(data: bytes | str, bad: Refusal, *, entries_as_tuples: bool = False) -> object:
    """The manifest's JSON document, for `checked_entries`.

    With `entries_as_tuples`, every object with exactly the keys path, size and sha256 becomes
    a `Listed` tuple as it is parsed, so the manifest never exists as one dict per file (less
    memory while it is held, at about 2.5 times the parsing time).
    """
    try:
        text = data if isinstance(data, str) else data.decode("utf-8")
        return json.loads(text, object_pairs_hook=_as_tuple if entries_as_tuples else None)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        raise bad("not JSON") from None


def _as_tuple(pairs: list[tuple[str, Any]]) -> Any:
    # Anything else stays a dict as json.loads gives it (the last of repeated keys wins).
    doc = dict(pairs)
    if doc.keys() == _ENTRY_KEYS:
        return (doc["path"], doc["size"], doc["sha256"])
    return doc


def checked_entries(
    doc: object, bad: Refusal, max_files: int | None = None, *, check_sha256: bool = True
) -> Iterator[Listed]:
    """Check the shape of the manifest `doc` and yield each entry's (path, size, sha256).

    Every rule of the format but the name policy is here, each with its words: the top-level
    keys, the counts, the entries list, `max_files`, each entry's keys and types, the sha256
    as 64 lower-case hex digits, and (after the last entry) the totals. Each entry is yielded
    once it passes, before the next is looked at, so a caller's own check of that entry (its
    name, say) is reported before anything wrong further on, as if it were one of these.
    An entry is a dict, or the tuple `load_manifest` made of one (yielded as it is).

    `check_sha256=False` is for a caller that compares every digest with a ``hexdigest()``
    (64 lower-case hex digits by construction) and accepts nothing else.
    """
    if not isinstance(doc, dict) or doc.keys() != _DOC_KEYS:
        raise bad("it must have exactly the keys files, bytes and entries")
    files, total, raw = doc["files"], doc["bytes"], doc["entries"]
    if not _is_count(files) or not _is_count(total) or not isinstance(raw, list):
        raise bad("files and bytes must be whole numbers and entries a list")
    if max_files is not None and len(raw) > max_files:
        raise bad(f"more than {max_files} files")
    size_sum = 0
    for item in raw:
        if isinstance(item, dict) and item.keys() == _ENTRY_KEYS:
            entry: Listed = (item["path"], item["size"], item["sha256"])
        elif isinstance(item, tuple):
            entry = item
        else:
            raise bad("each entry must have exactly path, size and sha256")
        path, size, digest = entry
        # `type() is` (no calls: this runs once per file) decides as isinstance would, and as
        # `_is_count` does for the size: JSON values are exactly str, int, bool and so on.
        if type(path) is not str or type(size) is not int or size < 0 or type(digest) is not str:
            raise bad("an entry has a field of the wrong type")
        if check_sha256 and not _HEX64.fullmatch(digest):
            raise bad(f"the sha256 of {path!r} is not 64 lower-case hex digits")
        yield entry
        size_sum += size
    if len(raw) != files or size_sum != total:
        raise bad("its totals do not match its entries")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
