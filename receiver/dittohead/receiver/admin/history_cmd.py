"""``dittohead-admin history | latest | verify``: what the ledger says, and whether it holds.

``history`` prints every record; ``latest`` the newest version of each path as sent;
``verify`` re-checks the hash chain and re-hashes every stored file against its record (a
fixity audit) and names files in the tree that no record accounts for.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from dittohead.core.errors import DittoheadError
from dittohead.receiver import fsops
from dittohead.receiver.config.model import Config
from dittohead.receiver.processor.ledger import LEDGER_DIR, check_chain, read_ledger


class VerifyFailed(DittoheadError):
    """The study tree does not match its ledger."""

    exit_code = 1


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    for name, handler, text in (
        ("history", run_history, "the ledger, one record per file that arrived"),
        ("latest", run_latest, "the newest version of each path"),
        ("verify", run_verify, "check the ledger's hash chain and re-hash the tree"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("--study", required=True)
        if name != "verify":
            p.add_argument("--json", action="store_true", help="one JSON object per line")
        if name == "history":
            p.add_argument("--upload", metavar="ID", help="only this upload (its id)")
            p.add_argument("--source", metavar="ID", help="only uploads from this station id")
            p.add_argument("--user", metavar="NAME", help="only uploads by this user")
            p.add_argument("--since", metavar="DATE", type=_when, help="received at or after (UTC)")
            p.add_argument(
                "--until",
                metavar="DATE",
                type=_when_end,
                help="received at or before (UTC; a date alone means to its end)",
            )
        p.set_defaults(handler=handler)


def _parse_when(text: str) -> tuple[datetime, bool]:
    """A DATE or DATE-TIME (ISO 8601, UTC unless it says otherwise); and whether it is a date."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date such as 2026-03-01 or 2026-03-01T14:30"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC), len(text) == 10


def _when(text: str) -> datetime:
    return _parse_when(text)[0]


def _when_end(text: str) -> datetime:
    when, date_only = _parse_when(text)
    return when + timedelta(days=1) - timedelta(microseconds=1) if date_only else when


def _received(doc: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(doc["received_at"]).astimezone(UTC)


def select(records: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The records that pass `history`'s filters (each one given narrows the selection)."""
    picked = []
    for doc in records:
        if args.upload is not None and doc["upload"] != args.upload:
            continue
        if args.source is not None and doc["source"] != args.source:
            continue
        if args.user is not None and doc["uploader"] != args.user:
            continue
        if args.since is not None and _received(doc) < args.since:
            continue
        if args.until is not None and _received(doc) > args.until:
            continue
        picked.append(doc)
    return picked


#: what the marks of the text form mean; printed above it
LEGEND = (
    "+ stored (a new file, or a new version of one)   "
    "= duplicate (same content already stored; nothing new written)"
)


def history_lines(
    records: list[dict[str, Any]], source_name: Callable[[str], str]
) -> Iterator[str]:
    """The text form of `history` (also what the demo shows): a line per upload with its id,
    when (UTC, with a Z), who and from which station, then a line per file."""
    upload = None
    for doc in records:
        if doc["upload"] != upload:
            upload = doc["upload"]
            name = source_name(doc["source"])
            station = doc["source"] if name == doc["source"] else f"{doc['source']} ({name})"
            yield (
                f"upload {upload}  received {doc['received_at'][:19]}Z  by {doc['uploader']}  "
                f"from {station}"
            )
        mark = "=" if doc["outcome"] == "duplicate" else "+"
        stored = f"  → {doc['stored_as']}" if doc["stored_as"] != doc["path"] else ""
        yield f"  {mark} {doc['path']}{stored}"


def _records(config: Config, study: str) -> tuple[int, list[dict[str, Any]]]:
    dest = config.study(study).destination
    try:
        fd = os.open(dest, fsops.DIR_FLAGS)
    except OSError as exc:
        raise DittoheadError(f"cannot open {dest}: {exc.strerror}") from None
    return fd, read_ledger(fd)


def run_history(config: Config, args: argparse.Namespace) -> int:
    fd, records = _records(config, args.study)
    os.close(fd)
    records = select(records, args)
    if args.json:
        for doc in records:
            print(json.dumps(doc, sort_keys=True, ensure_ascii=False))
        return 0
    if not records:
        filters = (args.upload, args.source, args.user, args.since, args.until)
        filtered = any(f is not None for f in filters)
        print("no records match these filters" if filtered else "the ledger is empty")
        return 0
    print(LEGEND)
    for line in history_lines(records, config.source_name):
        print(line)
    return 0


def latest(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """path as sent → its newest record (the version most recently received)."""
    newest: dict[str, dict[str, Any]] = {}
    for doc in records:
        newest[doc["path"]] = doc
    return dict(sorted(newest.items()))


def run_latest(config: Config, args: argparse.Namespace) -> int:
    fd, records = _records(config, args.study)
    os.close(fd)
    for path, doc in latest(records).items():
        if args.json:
            print(
                json.dumps(
                    {
                        "path": path,
                        **{
                            k: doc[k]
                            for k in (
                                "stored_as",
                                "sha256",
                                "size",
                                "received_at",
                                "uploader",
                                "source",
                                "upload",
                            )
                        },
                    },
                    sort_keys=True,
                    ensure_ascii=False,
                )
            )
        else:
            print(f"{path}  →  {doc['stored_as']}")
    return 0


def _hash_file(dest_fd: int, rel: str) -> tuple[int, str]:
    fd = fsops.open_beneath(dest_fd, rel, os.O_RDONLY)
    try:
        hasher = hashlib.sha256()
        size = 0
        while chunk := os.read(fd, 1 << 20):
            hasher.update(chunk)
            size += len(chunk)
        return size, hasher.hexdigest()
    finally:
        os.close(fd)


def _tree_files(dest_fd: int, prefix: str = "") -> list[str]:
    found = []
    sub = os.open(prefix or ".", fsops.DIR_FLAGS, dir_fd=dest_fd)
    try:
        with os.scandir(sub) as it:
            items = [(i.name, i.stat(follow_symlinks=False)) for i in it]
    finally:
        os.close(sub)
    for name, st in items:
        rel = f"{prefix}{name}"
        if rel == LEDGER_DIR:
            continue
        if stat.S_ISDIR(st.st_mode):
            found += _tree_files(dest_fd, rel + "/")
        else:
            found.append(rel)
    return found


def _differs(size: int, digest: str, doc: dict[str, Any]) -> str | None:
    """What differs between a stored file (its `size` and sha256 `digest`) and its record."""
    if digest == doc["sha256"]:
        if size == doc["size"]:
            return None
        # The bytes are the ones recorded: only the record's size can have been changed.
        return (
            f"the ledger says {doc['size']} bytes, the file has {size}, and its sha256 matches "
            "the ledger: the file is intact, the record's size was changed"
        )
    sizes = "" if size == doc["size"] else f" and size ({size} bytes, not {doc['size']})"
    return (
        f"its sha256{sizes} differs from the ledger: the file was changed since it was stored, "
        "or the record's sha256 was (see the chain's findings)"
    )


def verify(dest_fd: int, records: list[dict[str, Any]]) -> tuple[list[str], int]:
    """Problems found, and how many stored files were re-hashed."""
    problems = check_chain(records)
    checked = 0
    known = set()
    for doc in records:
        known.add(doc["stored_as"])
        if doc["outcome"] != "stored":
            continue
        try:
            size, digest = _hash_file(dest_fd, doc["stored_as"])
        except OSError as exc:
            problems.append(f"{doc['stored_as']}: missing or unreadable ({exc.strerror})")
            continue
        checked += 1
        differs = _differs(size, digest, doc)
        if differs:
            problems.append(f"{doc['stored_as']}: {differs}")
    for rel in _tree_files(dest_fd):
        if rel not in known:
            problems.append(f"{rel}: in the tree but not in the ledger")
    return problems, checked


def run_verify(config: Config, args: argparse.Namespace) -> int:
    fd, records = _records(config, args.study)
    try:
        problems, checked = verify(fd, records)
    finally:
        os.close(fd)
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        raise VerifyFailed(
            f"study {args.study!r}: {len(problems)} problems found "
            f"({len(records)} ledger records, {checked} files re-hashed)"
        )
    print(f"study {args.study!r}: ledger intact, {checked} stored files match their records")
    return 0
