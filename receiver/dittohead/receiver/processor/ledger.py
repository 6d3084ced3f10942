"""The per-study ledger: one hash-chained JSON line per file that ever arrived.

It lives beside the data it describes, in ``<destination>/.dittohead/ledger.jsonl`` (owned by
dittohead, readable by the study's group), so the record travels with the tree. Each record
carries ``prev`` (the previous record's ``hash``) and ``hash`` (sha256 over ``prev`` and the
record's canonical JSON), so editing, dropping or reordering any line breaks the chain, which
``dittohead-admin verify`` reports.

The file is only ever appended to. A crash can leave a torn last line; it is cut off when the
ledger is next written under the study lock (it was never acknowledged: the processor only
moves an entry to ``done/`` after the ledger's fsync), and the processor then re-records the
file from its journal.

Several hosts may append to one ledger (docs/design.md, "Several hosts"). Each keeps what it
knows of the file (count, last hash, path filter, the versions of the paths it asked about) up
to `Ledger._end`, the bytes it has taken in. Appends, and the duplicate check they rest on,
happen only under the study's fcntl lock (processor/lease.py), after `catch_up` has taken in
whatever other hosts appended since: so each host decides "same content already stored" on
the whole ledger, and writes its lines where the chain really ends.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, fields
from json.encoder import encode_basestring as _encode_str
from pathlib import Path
from typing import Any, Literal

from dittohead.core.errors import DittoheadError, OutOfSpace
from dittohead.receiver import fsops

log = logging.getLogger(__name__)

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


def _loads(raw: bytes) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(raw)
    except ValueError as exc:
        raise LedgerError(f"the ledger has a line that is not JSON: {raw[:80]!r}") from exc
    return doc


_PATH_KEY = b'"path":"'
#: the longest last line `Ledger._resume` looks back for (one is ~500 bytes)
_LAST_LINE_MAX = 1 << 16


def _filter_bits(size: int) -> int:
    """Bits of the path filter for a ledger of `size` bytes: at least 16 per line of ~500 bytes
    (2 bits per path: ~1.4% false positives at 16 bits per line, ~0.1% at 64). A full read
    sizes it for twice the ledger, rounded up to a power of two: 32 to 64 bits per line then, 8 MiB
    for 1,000,000 lines."""
    return 1 << max(16, (size // _LINE_GUESS * _FILTER_BITS_PER_LINE).bit_length())


#: bytes of a line, at least, for sizing the path filter; and the filter's bits per such line
_LINE_GUESS = 512
_FILTER_BITS_PER_LINE = 16


def parse_lines(data: bytes) -> Iterator[dict[str, Any]]:
    """The complete records in `data` (a torn last line, with no newline, is not one)."""
    for raw in data.split(b"\n")[:-1]:
        if raw.strip():
            try:
                yield json.loads(raw)
            except ValueError as exc:
                raise LedgerError(f"the ledger has a line that is not JSON: {raw[:80]!r}") from exc


def check_chain(docs: Iterable[dict[str, Any]]) -> list[str]:
    """Problems in the hash chain, in words (empty when it is intact).

    A break (lines removed, inserted or moved) is one problem, saying where and how many
    records follow it; the chain is picked up again from the record after it, so what follows
    is judged on its own and a single deleted line does not read as a thousand problems.
    """
    records = list(docs)
    problems: list[str] = []
    prev = GENESIS
    expected = 1
    for line, doc in enumerate(records, start=1):
        seq = doc.get("seq")
        what = f"record {seq!r} ({doc.get('stored_as', '?')}, line {line})"
        body = {k: v for k, v in doc.items() if k != "hash"}
        follow = len(records) - line + 1  # this record and those after it
        if seq != expected:
            gap = (
                f"{seq - expected} record(s) missing before it"
                if isinstance(seq, int) and seq > expected
                else f"record {expected} was expected there"
            )
            problems.append(f"the chain breaks at {what}: {gap}; {follow} record(s) from there on")
        elif doc.get("prev") != prev:
            problems.append(
                f"the chain breaks at {what}: it does not follow the record before it; "
                f"{follow} record(s) from there on"
            )
        if chain_hash(str(doc.get("prev")), body) != doc.get("hash"):
            problems.append(f"{what}: the record was edited (its fields do not match its hash)")
        prev = str(doc.get("hash"))
        expected = seq + 1 if isinstance(seq, int) else expected + 1
    return problems


class Ledger:
    """One study's ledger, opened for reading and appending by the processor."""

    def __init__(
        self, dest_fd: int, *, replay: Collection[str], summary: Path | None = None
    ) -> None:
        """Open the ledger under `dest_fd`; `replay` names the uploads a crash may have left
        part-recorded (the processor's journal), the only ones `recorded` is asked about.

        `summary` (a file of the processor's own, never in the tree) is where `close` leaves
        what it knows of the ledger (its length, count, last hash and path filter), so that
        the next open reads only the lines appended since, when the summary still matches.
        """
        self._summary = summary
        self._dir_fd = fsops.makedirs_beneath(dest_fd, LEDGER_DIR, 0o750)  # setgid: inherited
        self._fd = os.open(
            LEDGER_NAME,
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o640,
            dir_fd=self._dir_fd,
        )
        self.count = 0
        self._prev = GENESIS
        #: bytes of whole lines taken in (read, or written by this process); past it, only lines
        #: other hosts appended (or a torn one, cut off by `catch_up` under the lock)
        self._end = 0
        #: the count and last hash before the first of the queued lines (see `catch_up`)
        self._base: tuple[int, str] = (0, GENESIS)
        # Encoded lines waiting for `flush`, back to back: one buffer written as it is, rather
        # than one bytes object per line joined into a second copy at the flush.
        self._pending = bytearray()
        # Only what publishing needs, not the records themselves: the processor's memory
        # must not grow with a study's whole history, nor its start-up read every record into
        # an index. The history is held as a filter of the paths it has (two bits per path in
        # a bitmap of 16 to 64 bits per line: a path that was never sent is told apart from one
        # that may have been, with rare false positives, in a few MiB); the exact versions of
        # a path are read back from the file only when a path may be in it (`prepare`: one
        # read for all of an entry's paths).
        # `_versions`: path as sent -> where each content of it is stored ("the same content
        # for that path"), complete for every path it has (from the file and this run's
        # records): in the common case (one content, stored under the path itself) just its
        # sha256, else {sha256: stored_as} ("" when it has none). And, for the uploads in
        # `replay` only, (upload, path) -> (stored_as, outcome), so a replay after a crash finds
        # what it already recorded; an upload claimed in this pass has no records before this
        # pass, and publishes each of its paths once.
        self._versions: dict[str, str | dict[str, str]] = {}
        self._filter = bytearray()
        self._mask = 0
        self._replay = set(replay)
        self._seen: dict[tuple[str, str], tuple[str, Outcome]] = {}
        self._load()

    def _load(self) -> None:
        size = os.fstat(self._fd).st_size
        # A replay needs its upload's records, which may lie anywhere: then read it all.
        whole = 0 if self._replay else self._resume(size)  # bytes of complete lines
        if not whole:
            # Room for the ledger to double before the filter is too small (see `_resume`).
            bits = _filter_bits(2 * size)
            self._filter = bytearray(bits >> 3)
            self._mask = bits - 1
        # A torn last line is not taken in; it is cut off by `catch_up`, under the lock: here
        # it may be another host's line being written.
        self._end = self._take_in(whole)

    def _take_in(self, offset: int) -> int:
        """Take in the whole lines from `offset` on; return the offset after the last one."""
        with os.fdopen(os.dup(self._fd), "rb", buffering=1 << 20) as fh:
            fh.seek(offset)
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break
                offset += len(raw)
                if not raw.strip():
                    continue
                doc = _loads(raw)
                self.count += 1
                self._prev = doc["hash"]
                path = doc["path"]
                self._mark(path)
                if path in self._versions:  # complete for the paths it has: keep it so
                    self._add_version(path, doc["sha256"], doc["stored_as"])
                if doc["upload"] in self._replay:
                    self._seen[(doc["upload"], path)] = (doc["stored_as"], doc["outcome"])
        return offset

    def catch_up(self) -> None:
        """Take in what other hosts appended since `_end` (call it holding the study lock).

        Under the lock nobody is writing, so a torn last line is a writer's crash: never
        acknowledged, it is cut off (see the module docstring). Lines still queued here were
        chained onto the old end: they are chained again onto the new one.
        """
        size = os.fstat(self._fd).st_size
        if size == self._end:
            return
        queued = self._unqueue()
        self._end = self._take_in(self._end)
        if self._end != size:
            os.ftruncate(self._fd, self._end)
            os.fsync(self._fd)
        for record in queued:
            self._encode(record)

    def _unqueue(self) -> list[Record]:
        """The queued records, taken back out of the queue (count and last hash as before)."""
        if not self._pending:
            return []
        records = []
        for raw in bytes(self._pending).splitlines():
            doc = json.loads(raw)
            records.append(Record(**{name: doc[name] for name in _RECORD_FIELDS}))
        self.count, self._prev = self._base
        self._pending = bytearray()
        return records

    def add_replay(self, upload: str) -> None:
        """Make `recorded` answer for `upload` too (an entry resumed after a crash or taken
        over from another host): one read of the ledger for its records."""
        if upload in self._replay:
            return
        self._replay.add(upload)
        key = f'"upload":{json.dumps(upload, ensure_ascii=False)}'.encode()
        with os.fdopen(os.dup(self._fd), "rb", buffering=1 << 20) as fh:
            fh.seek(0)  # the dup shares the fd's offset
            done = 0
            for raw in fh:
                if done >= self._end or not raw.endswith(b"\n"):
                    break
                done += len(raw)
                if key in raw or b"\\" in raw:
                    doc = _loads(raw)
                    if doc["upload"] == upload:
                        self._seen[(upload, doc["path"])] = (doc["stored_as"], doc["outcome"])

    def _resume(self, size: int) -> int:
        """Take count, last hash and filter from the summary a previous pass left, if it still
        describes this ledger (the same file, its last line summed up still there with that
        hash and sequence number, the filter big enough for its size); return the offset to
        read on from, or 0 to read it all.

        The lines before that offset were read (and the ones this processor wrote, written)
        by earlier passes: what the processor takes from them is in the summary. Checking
        the whole chain is `dittohead-admin verify`'s job, as it always was.
        """
        if self._summary is None:
            return 0
        try:
            with open(self._summary, "rb") as fh:
                head = json.loads(fh.readline())
                offset, count, prev, nbits = (
                    head["offset"], head["count"], head["prev"], head["bits"]
                )  # fmt: skip
                st = os.fstat(self._fd)
                if (
                    head.get("v") != 1
                    or [head["dev"], head["ino"]] != [st.st_dev, st.st_ino]
                    or not 0 < offset <= size
                    or nbits < _filter_bits(size)
                    or nbits & (nbits - 1)
                ):
                    return 0
                bitmap = bytearray(nbits >> 3)
                if fh.readinto(bitmap) != len(bitmap) or fh.read(1):
                    return 0
            window = os.pread(
                self._fd, min(offset, _LAST_LINE_MAX), offset - min(offset, _LAST_LINE_MAX)
            )
            _, newline, last = window[:-1].rpartition(b"\n")
            if not window.endswith(b"\n") or (not newline and len(window) < offset):
                return 0
            doc = json.loads(last)
            if doc.get("hash") != prev or doc.get("seq") != count:
                return 0
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return 0  # none yet, or not one this code wrote: read the ledger
        self.count, self._prev = count, prev
        self._filter, self._mask = bitmap, nbits - 1
        return int(offset)

    def _save_summary(self) -> None:
        """Leave what the next open needs (see `_resume`); only with nothing left queued."""
        if self._summary is None or self._pending:
            return
        st = os.fstat(self._fd)
        if len(self._filter) * 8 < _filter_bits(self._end):
            # The ledger has outgrown its filter: the next open reads it all and sizes anew.
            with contextlib.suppress(FileNotFoundError):
                self._summary.unlink()
            return
        for path, have in self._versions.items():
            if have:  # this run's paths (the others are marked already, or have no record)
                self._mark(path)
        head = {
            "v": 1, "dev": st.st_dev, "ino": st.st_ino, "offset": self._end,
            "count": self.count, "prev": self._prev, "bits": len(self._filter) * 8,
        }  # fmt: skip
        try:
            self._summary.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Synced before it replaces the old one: a summary lost in a crash only means
            # reading the whole ledger once, but one whose filter reached the disk only in part
            # would call sent paths new (a second copy of the same content).
            fsops.replace_file(self._summary, (json.dumps(head).encode() + b"\n", self._filter))
        except OSError as exc:
            log.warning(
                "the ledger's summary could not be written (%s); next pass reads it all", exc
            )

    def _bits(self, path: str) -> tuple[int, int]:
        # A hash that is the same in every process: the filter is kept between passes.
        h = int.from_bytes(
            hashlib.blake2b(path.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        )
        return h & self._mask, (h >> 32) & self._mask

    def _mark(self, path: str) -> None:
        f = self._filter
        for bit in self._bits(path):
            f[bit >> 3] |= 1 << (bit & 7)

    def _may_have(self, path: str) -> bool:
        """False when no line read at start-up is about `path`; True when one may be."""
        f = self._filter
        return all(f[bit >> 3] >> (bit & 7) & 1 for bit in self._bits(path))

    def prepare(self, paths: Iterable[str]) -> None:
        """Find the stored versions of every path in `paths` with one read of the ledger.

        Call it before publishing an entry: `stored_version` and `append` then answer from
        memory. (They stay right without it, at one read of the file per path the filter
        cannot rule out.)
        """
        wanted = set()
        for path in paths:
            if path not in self._versions:
                if self._may_have(path):
                    wanted.add(path)
                else:
                    self._versions[path] = ""  # none: the filter rules it out
        if wanted:
            self._read_versions(wanted)

    def _read_versions(self, wanted: set[str]) -> None:
        """Put every version the file records of the paths in `wanted` into `_versions`.

        Only lines flushed before are read, and none of them is about a path `_versions`
        has already (its own records went into `_versions` when appended), so each path
        gets its whole history in file order: the first place of each content is kept.
        """
        for path in wanted:
            self._versions[path] = ""  # none, unless the file has some
        # Most lines are not about a wanted path, and those are passed over without parsing
        # them. In a line with no backslash at all (so no key or value spelt with escapes)
        # and one '"path"' (a '"' inside a JSON string is always escaped, so that text is a
        # key, or a whole value), written '"path":"', the path is the text up to the next
        # '"', and its bytes are the path's UTF-8. Any other line is parsed in full.
        keys = {p.encode("utf-8", "surrogatepass") for p in wanted}
        with os.fdopen(os.dup(self._fd), "rb", buffering=1 << 20) as fh:
            fh.seek(0)
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # cannot happen: the torn line was cut at start-up
                if b"\\" not in raw and raw.count(b'"path"') == 1:
                    start = raw.find(_PATH_KEY) + len(_PATH_KEY)
                    if start >= len(_PATH_KEY) and raw[start : raw.find(b'"', start)] not in keys:
                        continue
                elif not raw.strip():
                    continue
                doc = _loads(raw)
                if doc["path"] in wanted:
                    self._add_version(doc["path"], doc["sha256"], doc["stored_as"])

    def _remember(
        self, upload: str, path: str, sha256: str, stored_as: str, outcome: Outcome
    ) -> None:
        # Not marked in the filter now: it answers for the lines read at start-up only (this
        # run's paths are all in `_versions`), so it does not fill up as a big entry arrives.
        if path not in self._versions and self._may_have(path):
            self._read_versions({path})  # not prepared: its history first
        self._add_version(path, sha256, stored_as)
        if upload in self._replay:
            self._seen[(upload, path)] = (stored_as, outcome)

    def _add_version(self, path: str, sha256: str, stored_as: str) -> None:
        have = self._versions.get(path)
        if not have:  # none yet (absent, or "": a look-up found none)
            self._versions[path] = sha256 if stored_as == path else {sha256: stored_as}
        elif isinstance(have, str):
            if have != sha256:  # a second content: the first keeps its place (as setdefault)
                self._versions[path] = {have: path, sha256: stored_as}
        else:
            have.setdefault(sha256, stored_as)

    def stored_version(self, path: str, sha256: str) -> str | None:
        """Where content `sha256` of `path` is already stored, if it is."""
        have = self._versions.get(path)
        if have is None:
            if not self._may_have(path):
                return None
            self._read_versions({path})  # not prepared
            have = self._versions[path]
        if isinstance(have, str):
            return path if have == sha256 else None
        return have.get(sha256)

    def recorded(self, upload: str, path: str) -> tuple[str, Outcome] | None:
        """(stored_as, outcome) of `path` from `upload` (one of `replay`), if recorded."""
        return self._seen.get((upload, path))

    def append(self, record: Record) -> None:
        """Queue a record; it is written (and made durable) by `flush`."""
        self._remember(record.upload, record.path, record.sha256, record.stored_as, record.outcome)
        self._encode(record)

    def _encode(self, record: Record) -> None:
        if not self._pending:
            self._base = (self.count, self._prev)
        self.count += 1
        line, digest = encode_line(self.count, self._prev, record)
        self._prev = digest
        self._pending += line

    @property
    def queued_bytes(self) -> int:
        """Bytes of lines `append` queued that `flush` has not written yet."""
        return len(self._pending)

    def flush(self) -> None:
        """Write the queued lines and fsync (call it holding the study lock)."""
        if not self._pending:
            return
        self.catch_up()
        end = os.lseek(self._fd, 0, os.SEEK_END)
        view = memoryview(self._pending)
        try:
            fsops.write_all(self._fd, view)
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
        self._end = end + len(self._pending)
        self._pending = bytearray()

    def drop(self) -> None:
        """Forget the queued lines (their entry was taken over: its new holder records them)."""
        self._unqueue()

    def close(self, *, flush: bool = True) -> None:
        """Write what is queued (unless `flush` is False: then it is dropped) and close."""
        try:
            if flush:
                self.flush()
                self._save_summary()
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
