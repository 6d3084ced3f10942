"""The processor's journal: what it was doing, so that a restart after a kill finishes it.

One small JSON file per entry in the study's shared claims folder,
``<dropbox>/<study>/processing/.claims/`` (beside the entry's lease, processor/lease.py), so
that another host can finish an entry whose host died. Written only under the study lock, by
the holder of the entry's lease; replaced atomically (write, fsync, rename, fsync the folder)
at each step:

- ``claiming`` — written *before* the entry leaves the inbox, with the arrival time (the commit
  rename's ctime, the server's clock) and the uploader's uid;
- ``staged`` — every file verified and copied into the staging folder (synced), with the path
  of each copy in it (the staging folder mirrors the entry; journals of older versions name flat
  ``00000001`` copies, which replay the same way) and its inode. Publishing may then move whole
  folders of copies into the tree: a copy that is gone from its staged path was moved, alone or
  with a folder, and is found again by that inode;
- gone — the entry is in ``done/`` and the ledger is synced.

Every step is idempotent, so a replay from any of these states ends in the same place.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from dittohead.receiver import fsops
from dittohead.receiver.processor.verify import StagedFile

Step = Literal["claiming", "staged"]


@dataclass
class JournalEntry:
    entry: str
    study: str
    step: Step
    uid: int
    received_at: str
    dev: int
    ino: int
    files: list[StagedFile] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        return b"".join(self.json_chunks())

    def json_chunks(self) -> Iterator[bytes]:
        """The entry as compact JSON, in pieces of at most `_FILES_PER_CHUNK` files each.

        Written piece by piece, a 50,000-file entry never exists as one dict per file plus
        its whole text at once (~24 MiB of the processor's peak). Flat dicts, not asdict(),
        whose recursive deep copy cost 0.16 s per 20,000 files; all fields are str or int.
        """
        head = {name: getattr(self, name) for name in _ENTRY_FIELDS if name != "files"}
        text = json.dumps(head, separators=(",", ":"))
        yield (text[:-1] + ',"files":[').encode()
        for start in range(0, len(self.files), _FILES_PER_CHUNK):
            part = [
                {name: getattr(f, name) for name in _FILE_FIELDS}
                for f in self.files[start : start + _FILES_PER_CHUNK]
            ]
            text = json.dumps(part, separators=(",", ":"))
            yield (("," if start else "") + text[1:-1]).encode()
        yield b"]}"

    @classmethod
    def from_json(cls, data: bytes) -> JournalEntry:
        doc: dict[str, Any] = json.loads(data)
        doc["files"] = [StagedFile(**f) for f in doc.get("files", [])]
        return cls(**doc)


_ENTRY_FIELDS = tuple(f.name for f in fields(JournalEntry))
_FILES_PER_CHUNK = 2048
_FILE_FIELDS = tuple(f.name for f in fields(StagedFile))


class Journal:
    def __init__(self, folder: Path) -> None:
        """The journal in `folder` (the study's claims folder). A temporary file a killed
        processor left there is removed by `lease.Claims.sweep`, under the study lock: without
        it, it could be another host's write in progress."""
        self.dir = folder
        self.dir.mkdir(exist_ok=True, mode=0o700)

    def _path(self, entry: str) -> Path:
        return self.dir / f"{entry}.json"

    def write(self, item: JournalEntry) -> None:
        fsops.replace_file(self._path(item.entry), item.json_chunks(), sync_folder=True)

    def read(self, entry: str) -> JournalEntry | None:
        try:
            return JournalEntry.from_json(self._path(entry).read_bytes())
        except FileNotFoundError:
            return None

    def entries(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.json") if not p.name.startswith("."))

    def remove(self, entry: str) -> None:
        self._path(entry).unlink(missing_ok=True)
        fsops.fsync_folder(self.dir)

    def adopt(self, old: Path) -> None:
        """Move the journal files a processor from before the shared journal left in `old`
        (``<state_dir>/journal/<study>/``) into this one (under the study lock). They have no
        lease, so this host finishes them: they are its own, from before an upgrade."""
        if not old.is_dir():
            return
        fsops.remove_leftover_temps(old)  # host-local: only this host's processor wrote there
        for path in sorted(old.glob("*.json")):
            if not path.name.startswith(".") and not self._path(path.stem).exists():
                fsops.replace_file(self._path(path.stem), (path.read_bytes(),), sync_folder=True)
            path.unlink()
        fsops.fsync_folder(old)
