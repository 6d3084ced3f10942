"""The per-study ledger: one hash-chained JSON line per file that ever arrived.

It lives beside the data it describes, in ``<destination>/.dittohead/ledger.jsonl`` (owned by
dittohead, readable by the study's group), so the record travels with the tree. Each record
carries ``prev`` (the previous record's ``hash``) and ``hash`` (sha256 over ``prev`` and the
record's canonical JSON), so editing, dropping or reordering any line breaks the chain, which
``dittohead-admin verify`` reports.

The file is only ever appended to. A crash can leave a torn last line; it is cut off when the
ledger is next opened for writing (it was never acknowledged: the processor only moves an entry
to ``done/`` after the ledger's fsync), and the processor then re-records the file from its
journal.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, fields
from json.encoder import encode_basestring as _encode_str
from typing import Any, Literal

from dittohead.core.errors import DittoheadError, OutOfSpace
from dittohead.receiver import fsops

LEDGER_DIR = ".dittohead"
LEDGER_NAME = "ledger.jsonl"
GENESIS = "0" * 64

Outcome = Literal["stored", "duplicate"]


class LedgerError(DittoheadError):
    """The ledger is damaged; ask the admin to run 'dittohead-admin verify'."""

    exit_code = 65


@dataclass(frozen=True)
class Record:
    upload: str
    uploader: str
    uid: int
    source: str
    path: str
    stored_as: str
    size: int
    sha256: str
    outcome: Outcome
    received_at: str
    recorded_at: str

    def body(self) -> dict[str, Any]:
        # Every field is a str or an int, so a flat dict is what asdict() would build, without
        # its recursive deep copy (~7 us per record: 0.14 s of a 20,000-file upload).
        return {name: getattr(self, name) for name in _RECORD_FIELDS}


_RECORD_FIELDS = tuple(f.name for f in fields(Record))


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def chain_hash(prev: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(prev.encode() + b"\n" + _canonical(body)).hexdigest()


# The canonical JSON of a line, spelled out: its keys in sorted order, strings through the very
# function json.dumps(ensure_ascii=False) escapes them with, ints as json writes them. This is
# byte for byte _canonical() of the hashed body (tested against it with Hypothesis) at a third
# of the cost per record. "hash" sorts before every other key, so the stored line is that body
# with '"hash":"…",' put in front. A new field in Record must be added here (checked at import).
_LINE_KEYS = (
    "outcome", "path", "prev", "received_at", "recorded_at", "seq", "sha256", "size", "source",
    "stored_as", "uid", "upload", "uploader",
)  # fmt: skip
if tuple(sorted({"seq", "prev", *_RECORD_FIELDS})) != _LINE_KEYS or min(_LINE_KEYS) < "hash":
    raise ImportError("Record's fields changed: update encode_line")  # pragma: no cover


def encode_line(seq: int, prev: str, record: Record) -> tuple[bytes, str]:
    e = _encode_str
    hashed = (
        f'{{"outcome":{e(record.outcome)},"path":{e(record.path)},"prev":{e(prev)},'
        f'"received_at":{e(record.received_at)},"recorded_at":{e(record.recorded_at)},'
        f'"seq":{int(seq)},"sha256":{e(record.sha256)},"size":{int(record.size)},'
        f'"source":{e(record.source)},"stored_as":{e(record.stored_as)},'
        f'"uid":{int(record.uid)},"upload":{e(record.upload)},"uploader":{e(record.uploader)}}}'
    ).encode()
    digest = hashlib.sha256(prev.encode() + b"\n" + hashed).hexdigest()
    line = b'{"hash":"' + digest.encode() + b'",' + hashed[1:] + b"\n"
    return line, digest


def parse_lines(data: bytes) -> Iterator[dict[str, Any]]:
    """The complete records in `data` (a torn last line, with no newline, is not one)."""
    for raw in data.split(b"\n")[:-1]:
        if raw.strip():
            try:
                yield json.loads(raw)
            except ValueError as exc:
                raise LedgerError(f"the ledger has a line that is not JSON: {raw[:80]!r}") from exc


def check_chain(docs: Iterable[dict[str, Any]]) -> list[str]:
    """Problems in the hash chain, in words (empty when it is intact)."""
    problems: list[str] = []
    prev = GENESIS
    for expected_seq, doc in enumerate(docs, start=1):
        body = {k: v for k, v in doc.items() if k != "hash"}
        if doc.get("seq") != expected_seq:
            problems.append(f"record {expected_seq}: sequence number is {doc.get('seq')!r}")
        if doc.get("prev") != prev:
            problems.append(f"record {expected_seq}: does not follow the record before it")
        if chain_hash(str(doc.get("prev")), body) != doc.get("hash"):
            problems.append(f"record {expected_seq}: its content does not match its hash")
        prev = str(doc.get("hash"))
    return problems


class Ledger:
    """One study's ledger, opened for reading and appending by the processor."""

    def __init__(self, dest_fd: int, *, replay: Collection[str]) -> None:
        """Open the ledger under `dest_fd`; `replay` names the uploads a crash may have left
        part-recorded (the processor's journal), the only ones `recorded` is asked about."""
        self._dir_fd = fsops.makedirs_beneath(dest_fd, LEDGER_DIR, 0o750)  # setgid: inherited
        self._fd = os.open(
            LEDGER_NAME,
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o640,
            dir_fd=self._dir_fd,
        )
        self.count = 0
        self._prev = GENESIS
        # Encoded lines waiting for `flush`, back to back: one buffer written as it is, rather
        # than one bytes object per line joined into a second copy at the flush.
        self._pending = bytearray()
        # Only what publishing needs, not the records themselves: the processor's memory
        # must not grow with a study's whole history. path as sent -> where each content of it
        # is stored ("the same content for that path"): in the common case (one content, stored
        # under the path itself) just its sha256, else {sha256: stored_as}. And, for the
        # uploads in `replay` only, (upload, path) -> (stored_as, outcome), so a replay after a
        # crash finds what it already recorded; an upload claimed in this pass has no records
        # before this pass, and publishes each of its paths once.
        self._versions: dict[str, str | dict[str, str]] = {}
        self._replay = frozenset(replay)
        self._seen: dict[tuple[str, str], tuple[str, Outcome]] = {}
        self._load()

    def _load(self) -> None:
        whole = 0  # bytes of complete lines
        with os.fdopen(os.dup(self._fd), "rb", buffering=1 << 20) as fh:
            fh.seek(0)
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break
                whole += len(raw)
                if not raw.strip():
                    continue
                try:
                    doc = json.loads(raw)
                except ValueError as exc:
                    raise LedgerError(
                        f"the ledger has a line that is not JSON: {raw[:80]!r}"
                    ) from exc
                self.count += 1
                self._prev = doc["hash"]
                self._index(doc)
        if whole != os.fstat(self._fd).st_size:
            # A torn line from a crash: never acknowledged, cut it off (see module docstring).
            os.ftruncate(self._fd, whole)
            os.fsync(self._fd)

    def _index(self, doc: dict[str, Any]) -> None:
        self._remember(doc["upload"], doc["path"], doc["sha256"], doc["stored_as"], doc["outcome"])

    def _remember(
        self, upload: str, path: str, sha256: str, stored_as: str, outcome: Outcome
    ) -> None:
        path = sys.intern(path)
        stored_as = path if stored_as == path else stored_as
        have = self._versions.get(path)
        if have is None:
            self._versions[path] = sha256 if stored_as is path else {sha256: stored_as}
        elif isinstance(have, str):
            if have != sha256:  # a second content: the first keeps its place (as setdefault)
                self._versions[path] = {have: path, sha256: stored_as}
        else:
            have.setdefault(sha256, stored_as)
        if upload in self._replay:
            self._seen[(upload, path)] = (stored_as, outcome)

    def stored_version(self, path: str, sha256: str) -> str | None:
        """Where content `sha256` of `path` is already stored, if it is."""
        have = self._versions.get(path)
        if isinstance(have, str):
            return path if have == sha256 else None
        return None if have is None else have.get(sha256)

    def recorded(self, upload: str, path: str) -> tuple[str, Outcome] | None:
        """(stored_as, outcome) of `path` from `upload` (one of `replay`), if recorded."""
        return self._seen.get((upload, path))

    def append(self, record: Record) -> None:
        """Queue a record; it is written (and made durable) by `flush`."""
        self.count += 1
        line, digest = encode_line(self.count, self._prev, record)
        self._remember(record.upload, record.path, record.sha256, record.stored_as, record.outcome)
        self._prev = digest
        self._pending += line

    @property
    def queued_bytes(self) -> int:
        """Bytes of lines `append` queued that `flush` has not written yet."""
        return len(self._pending)

    def flush(self) -> None:
        if not self._pending:
            return
        end = os.lseek(self._fd, 0, os.SEEK_END)
        view = memoryview(self._pending)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            # Never leave part of a line behind for the next flush to append after (that would
            # glue two records into one broken line): back to the last whole record, keep the
            # queue, and let the caller decide (out of space: retried on a later run).
            os.ftruncate(self._fd, end)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfSpace("the study's destination is out of space") from exc
            raise
        finally:
            view.release()  # else the kept queue could not grow again after a failed flush
        self._pending = bytearray()

    def close(self, *, flush: bool = True) -> None:
        """Write what is queued (unless `flush` is False: then it is dropped) and close."""
        try:
            if flush:
                self.flush()
        finally:
            os.close(self._fd)
            os.close(self._dir_fd)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def read_ledger(dest_fd: int) -> list[dict[str, Any]]:
    """All complete records of the ledger under `dest_fd` (read-only; for the admin tool)."""
    try:
        fd = fsops.open_beneath(dest_fd, f"{LEDGER_DIR}/{LEDGER_NAME}", os.O_RDONLY)
    except FileNotFoundError:
        return []
    try:
        return list(parse_lines(_read_all(fd)))
    finally:
        os.close(fd)
