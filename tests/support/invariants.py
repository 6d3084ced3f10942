"""What must hold after the processor has run, however often it was killed on the way.

Shared by the fault-injection, state-machine and hostile-entry tests: the study tree, the
ledger, the journal and the dropbox folders are compared against what was sent.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

from dittohead.receiver.dropbox import CLAIMS, PROCESSING
from dittohead.receiver.processor.lease import LOCK_NAME
from dittohead.receiver.processor.ledger import check_chain, read_ledger


def ledger_of(destination: Path) -> list[dict[str, Any]]:
    fd = os.open(destination, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return read_ledger(fd)
    finally:
        os.close(fd)


def tree_files(destination: Path) -> dict[str, bytes]:
    """Every stored file (the ledger's own folder excepted), by path relative to the tree."""
    out: dict[str, bytes] = {}
    for path in sorted(destination.rglob("*")):
        rel = path.relative_to(destination).as_posix()
        if rel == ".dittohead" or rel.startswith(".dittohead/"):
            continue
        if path.is_file() and not path.is_symlink():
            out[rel] = path.read_bytes()
    return out


def tree_problems(destination: Path) -> list[str]:
    """The tree and its ledger agree: chain intact, one record per (upload, path), every file
    in the tree recorded as stored exactly once with its content, no content stored twice
    for one path."""
    problems: list[str] = []
    records = ledger_of(destination)
    problems += check_chain(records)
    keys = Counter((r["upload"], r["path"]) for r in records)
    problems += [f"{k}: {n} ledger records" for k, n in keys.items() if n != 1]
    files = tree_files(destination)
    stored = [r for r in records if r["outcome"] == "stored"]
    where = Counter(r["stored_as"] for r in stored)
    problems += [f"{name}: recorded as stored {n} times" for name, n in where.items() if n != 1]
    for r in stored:
        data = files.get(r["stored_as"])
        if data is None:
            problems.append(f"{r['stored_as']}: in the ledger but not in the tree")
        elif hashlib.sha256(data).hexdigest() != r["sha256"]:
            problems.append(f"{r['stored_as']}: content differs from its record")
    problems += [
        f"{name}: in the tree but not in the ledger" for name in files if name not in where
    ]
    twice = Counter((r["path"], r["sha256"]) for r in stored)
    problems += [f"{p}: one content stored {n} times" for (p, _), n in twice.items() if n != 1]
    for r in records:
        if r["outcome"] == "duplicate" and (r["path"], r["sha256"]) not in twice:
            problems.append(f"{r['path']}: duplicate of a version that was never stored")
    return problems


def sent_problems(destination: Path, sent: dict[str, set[bytes]]) -> list[str]:
    """Every distinct content sent for each path is stored (exactly once: see tree_problems)."""
    have: dict[str, set[bytes]] = {}
    files = tree_files(destination)
    for r in ledger_of(destination):
        if r["outcome"] == "stored" and r["stored_as"] in files:
            have.setdefault(r["path"], set()).add(files[r["stored_as"]])
    return [
        f"{path}: {len(contents - have.get(path, set()))} sent version(s) not stored"
        for path, contents in sent.items()
        if contents - have.get(path, set())
    ]


def dropbox_problems(study_dir: Path, state_dir: Path, destination: Path) -> list[str]:
    """Nothing left half-done: processing/, the journal and staging are empty, every entry in
    done/ or quarantine/ is there once (a name cannot be in a folder twice, so: not in both)."""
    problems: list[str] = []
    for sub in ("processing",):
        left = sorted(p.name for p in (study_dir / sub).iterdir() if p.name != CLAIMS)
        if left:
            problems.append(f"{sub}/ still holds {left}")
    # The shared journals and leases (the study lock stays); and no journal left from before
    # they were shared.
    for journal in (study_dir / PROCESSING / CLAIMS, state_dir / "journal" / study_dir.name):
        left = sorted(p.name for p in journal.glob("*") if p.name != LOCK_NAME)
        if left:
            problems.append(f"journal not empty: {left}")
    staging = destination / ".dittohead" / "staging"
    if staging.exists() and any(staging.iterdir()):
        problems.append(f"staging not empty: {sorted(p.name for p in staging.iterdir())}")
    done = {p.name for p in (study_dir / "done").iterdir()}
    quarantined = {p.name for p in (study_dir / "quarantine").iterdir() if p.is_dir()}
    problems += [f"{name}: both done and quarantined" for name in done & quarantined]
    return problems
