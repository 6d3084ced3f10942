"""Outcomes: what became of each upload, where its uploader alone can read it.

Only the processor knows an upload's outcome, and ``dittohead status`` runs as the collector
(the receiver, through sshd). So the processor leaves one small JSON document per upload in a
folder per uploader (docs/design.md, "Outcomes"):

    <dropbox>/<study>/outcomes/               dittohead 0711   nobody may list it
    <dropbox>/<study>/outcomes/<uid>/         dittohead 0700 + ACL user:<uid>:r-x
    <dropbox>/<study>/outcomes/<uid>/<entry>.json   dittohead 0600 + ACL user:<uid>:r--

The folder and the files stay the processor's (it has no CAP_CHOWN and needs none): it grants
the uploader read access with a POSIX access ACL, which the owner of a file may set
(``system.posix_acl_access``, the xattr ``setfacl`` writes; `acl_xattr`). Nobody else can list
``outcomes/`` or enter another uid's folder, and the uploader cannot change anything there. The
uid is the kernel's (the entry's owner, recorded in the journal at claim time), never a name
from the entry.

Each document is written to a temporary name and renamed over the previous one: a reader sees
the old or the new document, never half of one. A ``waiting`` document is written when an
entry is claimed (not synced: it only says "in progress"); the final one (``finalized`` with
each file's outcome and ``stored_as``, or ``quarantined`` with the reason) is synced before the
entry moves to ``done/`` or ``quarantine/``, so a crash can never leave a finished entry
reported as waiting. Recording an outcome must never fail a pass: errors are logged.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import stat
from collections.abc import Iterable
from typing import Any

from dittohead.receiver import fscaps, fsops
from dittohead.receiver.dropbox import OUTCOMES, source_of
from dittohead.receiver.processor.journal import Journal

log = logging.getLogger(__name__)

#: in the kernel's xattr format (`fsops.acl_xattr`), as setfacl writes it
acl_xattr = fsops.acl_xattr


def _grant(fd: int, owner_perm: int, uid: int, perm: int) -> None:
    os.setxattr(fd, fsops.ACL_XATTR, acl_xattr(owner_perm, uid, perm))


def _open_folder(study_fd: int, uid: int) -> int:
    """The uploader's outcomes folder (made, and granted to them, when missing)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(OUTCOMES, 0o711, dir_fd=study_fd)
    top = os.open(OUTCOMES, fsops.DIR_FLAGS, dir_fd=study_fd)
    try:
        # The unit's UMask=0027 takes the others' search bit off mkdir's 0711, and collectors
        # are "others": without it they could not reach their own folder.
        if stat.S_IMODE(os.fstat(top).st_mode) != 0o711:
            os.fchmod(top, 0o711)
        name = str(uid)
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=top)
        fd = os.open(name, fsops.DIR_FLAGS, dir_fd=top)
        # Again every time: cheap, and it repairs a folder a crash left without its ACL.
        _grant(fd, 0o7, uid, 0o5)
        return fd
    finally:
        os.close(top)


def _write(
    study_fd: int, uid: int, entry: str, doc: dict[str, Any], *, sync: bool, replace: bool = True
) -> None:
    data = json.dumps(doc, ensure_ascii=False, sort_keys=True).encode("utf-8")
    folder = _open_folder(study_fd, uid)
    # Per writer: several hosts may write an entry's document at once (see `waiting`).
    tmp = f".{entry}.json.{secrets.token_hex(4)}.tmp"
    try:
        # Temporary files of this document left by a killed run go with the next write that
        # replaces it: the processor's own under the study lock, never a "waiting" one, which
        # could be another host's final document on its way.
        for name in os.listdir(folder) if replace else ():
            if name.startswith(f".{entry}.json.") and name != tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=folder)
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=folder,
        )
        try:
            _grant(fd, 0o6, uid, 0o4)
            fsops.write_all(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(tmp, f"{entry}.json", src_dir_fd=folder, dst_dir_fd=folder)
        else:
            try:
                # Never over another host's document (link()+unlink() where the file system
                # refuses RENAME_NOREPLACE: a GlusterFS mount).
                fscaps.rename_noreplace(folder, tmp, folder, f"{entry}.json")
            except FileExistsError:
                os.unlink(tmp, dir_fd=folder)
        if sync:
            os.fsync(folder)
    finally:
        os.close(folder)


def _record(
    study_fd: int, uid: int, entry: str, doc: dict[str, Any], *, sync: bool, replace: bool = True
) -> None:
    try:
        _write(study_fd, uid, entry, doc, sync=sync, replace=replace)
    except OSError as exc:
        # The ledger is the truth; an outcome its uploader cannot see is a nuisance, not a
        # reason to stop finalizing. ENOTSUP: a file system without POSIX ACLs.
        hint = (
            " (the dropbox's file system has no POSIX ACLs)"
            if exc.errno
            in (
                errno.ENOTSUP,
                errno.EOPNOTSUPP,
            )
            else ""
        )
        log.warning("could not record the outcome of %s: %s%s", entry, exc, hint)


def _base(entry: str, received_at: str, state: str) -> dict[str, Any]:
    return {
        "upload": entry,
        "source": source_of(entry),
        "received_at": received_at,
        "state": state,
        "reason": None,
        "files": [],
    }


def waiting(study_fd: int, uid: int, entry: str, received_at: str) -> None:
    """The entry is committed in the inbox (or claimed); its outcome is not known yet.

    Never replaces a document: another host may have claimed and finished the entry since
    this one listed the inbox, and its "finalized" must not turn back into "waiting"."""
    _record(study_fd, uid, entry, _base(entry, received_at, "waiting"), sync=False, replace=False)


def forget(study_fd: int, uid: int, entry: str) -> None:
    """The entry left the inbox before it was claimed (its owner removed it): no outcome."""
    try:
        folder = _open_folder(study_fd, uid)
    except OSError as exc:
        log.warning("could not remove the outcome of %s: %s", entry, exc)
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{entry}.json", dir_fd=folder)
    finally:
        os.close(folder)


def finalized(
    study_fd: int, uid: int, entry: str, received_at: str, files: Iterable[tuple[str, str, str]]
) -> None:
    """Every file of the entry is in the tree and the ledger; `files` are (path, outcome,
    stored_as) from its ledger records (three strings a file, not the records: an entry
    may hold many thousands)."""
    doc = _base(entry, received_at, "finalized")
    doc["files"] = [
        {"path": path, "outcome": outcome, "stored_as": stored_as}
        for path, outcome, stored_as in files
    ]
    _record(study_fd, uid, entry, doc, sync=True)


def quarantined(study_fd: int, journal: Journal, entry: str, reason: str) -> None:
    """The entry was refused; nothing of it is in the tree. Its uploader is the uid its
    journal recorded at claim time (there is always one: it is written before the claim)."""
    item = journal.read(entry)
    if item is None:
        log.warning("no journal for %s: its outcome is not recorded", entry)
        return
    uid, received_at = item.uid, item.received_at
    doc = _base(entry, received_at, "quarantined")
    doc["reason"] = reason
    _record(study_fd, uid, entry, doc, sync=True)
