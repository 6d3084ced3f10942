"""Claim: take a committed entry out of the inbox, by file descriptor, into ``processing/``.

The inbox is writable by everyone, so nothing in it is trusted but what the kernel says: an
entry is a directory (not a symlink) with a well-formed name, owned by a uid that may upload to
this study. The entry is opened ``O_DIRECTORY|O_NOFOLLOW`` first and its ``(st_dev, st_ino)``
compared after the move, so a swap between look-up and rename is noticed. The collector's held
fds keep working after the move: everything after the claim assumes they still write into it.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime

from dittohead.receiver import fscaps, fsops
from dittohead.receiver.accounts import groups_of
from dittohead.receiver.dropbox import ENTRY_RE, is_staging, source_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    name: str
    uid: int
    ctime_ns: int
    dev: int
    ino: int

    @property
    def source(self) -> str:
        return source_of(self.name)


class ClaimLost(Exception):
    """The entry vanished or changed before it could be claimed (not an error: skip it)."""


class ClaimDenied(ClaimLost):
    """The kernel refused to move the entry: its owner took away the write permission that
    moving a folder to another parent needs. Left alone in the inbox (and logged); the
    processor never changes the modes of what it does not own."""


class EntryRejected(Exception):
    """An entry breaks the rules; it goes to quarantine with this reason for the admin."""


def may_upload(uid: int, uploaders: tuple[str, ...]) -> bool:
    return bool(groups_of(uid) & set(uploaders))


def committed_entries(inbox_fd: int) -> list[Candidate]:
    """Committed entries waiting in the inbox, oldest commit first.

    Dot entries are still being written (the janitor deals with stale ones); anything that is
    not a real directory with an entry name is logged and left alone, never followed.
    """
    found: list[Candidate] = []
    with os.scandir(inbox_fd) as it:
        for item in it:
            name = item.name
            if is_staging(name):
                continue
            try:
                st = os.stat(name, dir_fd=inbox_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode) or not ENTRY_RE.fullmatch(name):
                log.warning("inbox: ignoring %r (not an upload entry)", name)
                continue
            found.append(Candidate(name, st.st_uid, st.st_ctime_ns, st.st_dev, st.st_ino))
    # The rename that commits an entry sets its ctime: ctime order is commit order.
    found.sort(key=lambda c: (c.ctime_ns, c.name))
    return found


def fair_order(cands: list[Candidate]) -> list[Candidate]:
    """`cands` in round-robin order across uploaders: one entry per uid in turn.

    Each uploader's own entries keep their commit order (so version numbers follow arrival
    for what one person sends), but a collector who commits a thousand entries only gets every
    other turn against a colleague who commits one (docs/design.md, "Denial of service"). Uploaders
    take their turns in the order of their oldest waiting commit.
    """
    queues: dict[int, list[Candidate]] = {}
    for cand in sorted(cands, key=lambda c: (c.ctime_ns, c.name)):
        queues.setdefault(cand.uid, []).append(cand)
    out: list[Candidate] = []
    depth = 0
    while len(out) < len(cands):
        out.extend(queue[depth] for queue in queues.values() if depth < len(queue))
        depth += 1
    return out


def claim(inbox_fd: int, processing_fd: int, cand: Candidate) -> None:
    """Move `cand` from the inbox into processing/, making sure it is what was looked at."""
    try:
        fd = os.open(cand.name, fsops.DIR_FLAGS, dir_fd=inbox_fd)
    except (FileNotFoundError, NotADirectoryError, OSError) as exc:
        raise ClaimLost(f"{cand.name}: {exc}") from None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (cand.dev, cand.ino):
            raise ClaimLost(f"{cand.name}: replaced before it was claimed")
        try:
            fscaps.rename_noreplace(inbox_fd, cand.name, processing_fd, cand.name)
        except PermissionError:
            # Moving a folder to another parent rewrites its "..", which needs write
            # permission on the folder itself: the uploader chmodded their entry (the receiver
            # makes it 2770). Their problem only: never a reason to stop the whole pass.
            raise ClaimDenied(
                f"{cand.name}: its owner removed the group's write permission "
                f"(mode {stat.S_IMODE(st.st_mode):04o}), so it cannot be moved; left alone"
            ) from None
        moved = os.stat(cand.name, dir_fd=processing_fd, follow_symlinks=False)
        if (moved.st_dev, moved.st_ino) != (st.st_dev, st.st_ino):
            # Something else was renamed in its place between the open and the rename. It is in
            # processing/ now and is nobody's honest upload: quarantine it.
            raise EntryRejected("the entry was swapped for another directory while claimed")
    finally:
        os.close(fd)


def iso_utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
