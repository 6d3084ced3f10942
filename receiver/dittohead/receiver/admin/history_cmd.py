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
        p.set_defaults(handler=handler)


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
    for doc in records:
        if args.json:
            print(json.dumps(doc, sort_keys=True, ensure_ascii=False))
        else:
            mark = "=" if doc["outcome"] == "duplicate" else "+"
            print(
                f"{doc['received_at'][:19]}  {doc['uploader']:<12} {doc['source']:<14} "
                f"{mark} {doc['path']}"
                + (f"  → {doc['stored_as']}" if doc["stored_as"] != doc["path"] else "")
            )
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
