"""The dropbox contract: each study's folders in the dropbox and the names of the entries in them.

Three parties share it: ``dittohead-receive`` (running as the collector) writes into a study's
``inbox/``; the processor (running as ``dittohead``) claims from there and files entries away;
``dittohead-admin init`` and ``check`` create and inspect the folders. This module is the only
place where the folder names, their modes, the entry names and the staging prefix are written.
docs/design.md ("The dropbox") describes the contract for people.

    <dropbox>/<study>/inbox/.<entry>/     staging: the receiver writes, as the collector
    <dropbox>/<study>/inbox/<entry>/      committed: waiting for the processor
    <dropbox>/<study>/processing/<entry>/ claimed by the processor
    <dropbox>/<study>/processing/.claims/ the lock, journals and leases shared by the hosts
    <dropbox>/<study>/done/<entry>/       finalized; the collector's original kept
    <dropbox>/<study>/quarantine/<entry>/ refused, with ``<entry>.reason`` beside it
    <dropbox>/<study>/stale/.<entry>/     abandoned staging, moved aside by the janitor
    <dropbox>/<study>/outcomes/<uid>/<entry>.json   what became of it, for its uploader alone
    <dropbox>/.notices/                   the disk and silence checks' state, shared by the hosts
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

INBOX = "inbox"
PROCESSING = "processing"
DONE = "done"
QUARANTINE = "quarantine"
STALE = "stale"
#: per-uploader outcome documents (made by the processor when first needed; see
#: processor/outcomes.py): ``outcomes/<uid>/<entry>.json``
OUTCOMES = "outcomes"
#: inside processing/: the study lock, each claimed entry's journal and lease, shared by every
#: host's processor (see processor/lease.py)
CLAIMS = ".claims"

#: in the dropbox itself (no study name starts with a dot): the state of the disk and silence
#: checks that every host's processor decides on together, and the lock it is changed under
#: (see processor/notices.py); dittohead 0700
SHARED_NOTICES = ".notices"
SHARED_NOTICES_MODE = 0o700

#: an entry's name while the receiver still writes it; nothing else in the inbox starts so
STAGING_PREFIX = "."

#: ``<source>-<UTC time>-<random>``: sortable by arrival, unguessable by other users
ENTRY_RE = re.compile(
    r"(?P<source>[A-Za-z0-9][A-Za-z0-9._-]{0,63})-(?P<time>[0-9]{8}T[0-9]{6}Z)-(?P<rand>[0-9a-f]{16})"
)
STAGING_RE = re.compile(re.escape(STAGING_PREFIX) + ENTRY_RE.pattern)


@dataclass(frozen=True, slots=True)
class Folder:
    """One of a study's folders in the dropbox, as ``init`` makes it and ``check`` expects it
    (owned by the service account)."""

    name: str
    mode: int
    why: str


#: a study's folders, in the order ``init`` creates them (the study's own folder first)
STUDY_FOLDERS = (
    Folder("", 0o755, "the study's folder in the dropbox"),
    # setgid so entries get dittohead's group; sticky so nobody removes another's entry;
    # writable and searchable but not readable by others: anyone may create, nobody may list
    Folder(INBOX, 0o3773, "where collectors' uploads arrive"),
    Folder(PROCESSING, 0o700, "entries the processor has claimed"),
    Folder(DONE, 0o700, "the originals of finalized entries"),
    Folder(QUARANTINE, 0o700, "refused entries, each with its reason"),
    Folder(STALE, 0o700, "abandoned staging entries the janitor moved aside"),
)


def study_dir(dropbox: Path, study: str) -> Path:
    """The study's folder in the dropbox."""
    return dropbox / study


def claims_dir(dropbox: Path, study: str) -> Path:
    """The study's shared claims folder (lock, journals, leases)."""
    return study_dir(dropbox, study) / PROCESSING / CLAIMS


def shared_notices_dir(dropbox: Path) -> Path:
    """The dropbox-wide folder of the notice checks' shared state (see `SHARED_NOTICES`)."""
    return dropbox / SHARED_NOTICES


def entry_name(source: str, now: float | None = None) -> str:
    """A new entry's name for an upload from station `source`."""
    when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"{source}-{when}-{os.urandom(8).hex()}"


def staging_name(entry: str) -> str:
    """The name `entry` has in the inbox while it is being written."""
    return STAGING_PREFIX + entry


def is_staging(name: str) -> bool:
    """Whether `name` in an inbox is (or pretends to be) an entry still being written."""
    return name.startswith(STAGING_PREFIX)


def source_of(entry: str) -> str:
    """The station id in an entry name."""
    match = ENTRY_RE.fullmatch(entry)
    if match is None:
        raise ValueError(f"{entry!r} is not an entry name")
    return match["source"]
