"""The manifest: the last member of every upload, and the proof that it is complete.

A truncated tar stream can look like a shorter valid archive, so the client ends every upload
with ``.dittohead/manifest.json`` listing every file with its size and sha256; the receiver
checks each file it wrote against it, and the processor re-hashes every byte against it again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from dittohead.core.errors import NameRejected, UploadRejected
from dittohead.core.names import NameSet, check_path

MANIFEST_PATH = ".dittohead/manifest.json"
MANIFEST_DIR = ".dittohead"
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)  # one per file sent: slots make them cheaper to create
class ManifestEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    entries: tuple[ManifestEntry, ...]

    @property
    def file_count(self) -> int:
        return len(self.entries)

    @property
    def byte_count(self) -> int:
        return sum(e.size for e in self.entries)

    def to_json(self) -> bytes:
        doc = {
            "files": self.file_count,
            "bytes": self.byte_count,
            "entries": [{"path": e.path, "size": e.size, "sha256": e.sha256} for e in self.entries],
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def of(cls, entries: Iterable[ManifestEntry]) -> Manifest:
        return cls(tuple(entries))

    def by_path(self) -> dict[str, ManifestEntry]:
        return {e.path: e for e in self.entries}


def _bad(why: str) -> UploadRejected:
    return UploadRejected(f"the upload's manifest is not valid ({why}); nothing was stored")


def parse_manifest(data: bytes, *, max_files: int | None = None) -> Manifest:
    """Parse and check a manifest strictly; raise `UploadRejected` on anything odd."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad("not JSON") from exc
    if not isinstance(doc, dict) or set(doc) != {"files", "bytes", "entries"}:
        raise _bad("it must have exactly the keys files, bytes and entries")
    files, total, raw = doc["files"], doc["bytes"], doc["entries"]
    if not _is_count(files) or not _is_count(total) or not isinstance(raw, list):
        raise _bad("files and bytes must be whole numbers and entries a list")
    if max_files is not None and len(raw) > max_files:
        raise _bad(f"more than {max_files} files")
    names = NameSet()
    entries: list[ManifestEntry] = []
    for item in raw:
        if not isinstance(item, dict) or set(item) != {"path", "size", "sha256"}:
            raise _bad("each entry must have exactly path, size and sha256")
        path, size, digest = item["path"], item["size"], item["sha256"]
        if not isinstance(path, str) or not _is_count(size) or not isinstance(digest, str):
            raise _bad("an entry has a field of the wrong type")
        if not _HEX64.fullmatch(digest):
            raise _bad(f"the sha256 of {path!r} is not 64 lower-case hex digits")
        try:
            checked = check_path(path)
            names.add_file(path)
        except NameRejected as exc:
            raise _bad(exc.message) from None
        if checked != path:
            raise _bad(f"{path!r} is not in normal form")
        entries.append(ManifestEntry(path, size, digest))
    manifest = Manifest(tuple(entries))
    if manifest.file_count != files or manifest.byte_count != total:
        raise _bad("its totals do not match its entries")
    return manifest


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
