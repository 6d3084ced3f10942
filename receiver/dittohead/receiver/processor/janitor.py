"""The janitor: move abandoned staging entries out of the inbox.

A receiver that dies without cleaning up (the machine lost power, the kernel killed it) leaves a
``.<entry>`` staging folder behind. It belongs to the collector and is not data: nothing was
acknowledged for it. The processor never reads it; after ``limits.stale_after`` seconds without
any change anywhere inside it, the janitor moves it, unread, into ``<study>/stale/`` (dittohead
0700), where the admin can look at it and purge it like ``done/``.

"Without any change" is judged from ``fstat`` of every object in the entry, opened
``O_PATH|O_NOFOLLOW`` (never followed, never opened for reading): a live upload writes into some
file continuously, and the receiver itself gives up after ``limits.stall_timeout`` seconds of
silence, which the configuration requires to be shorter than ``stale_after``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time

from dittohead.receiver import fscaps, fsops
from dittohead.receiver.accounts import user_name
from dittohead.receiver.dropbox import STAGING_RE, STALE

log = logging.getLogger(__name__)

#: never walk more than this many objects of one abandoned entry to judge its age
_WALK_CAP = 200_000


def newest_change_ns(dir_fd: int, budget: list[int]) -> int:
    """The newest mtime/ctime of anything beneath `dir_fd` (bounded walk, nothing followed)."""
    st = os.fstat(dir_fd)
    newest = max(st.st_mtime_ns, st.st_ctime_ns)
    with os.scandir(dir_fd) as it:
        names = [item.name for item in it]
    for name in names:
        budget[0] -= 1
        if budget[0] <= 0:
            return newest  # huge: judged by what was seen (a live upload shows up early)
        try:
            fd = os.open(name, fsops.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        try:
            child = os.fstat(fd)
            newest = max(newest, child.st_mtime_ns, child.st_ctime_ns)
            if stat.S_ISDIR(child.st_mode):
                sub = os.open(".", fsops.DIR_FLAGS, dir_fd=fd)
                try:
                    newest = max(newest, newest_change_ns(sub, budget))
                finally:
                    os.close(sub)
        finally:
            os.close(fd)
    return newest


def sweep(study_fd: int, inbox_fd: int, stale_after: float, now_ns: int | None = None) -> list[str]:
    """Move staging entries idle for `stale_after` seconds into ``stale/``; return their names."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    moved: list[str] = []
    with os.scandir(inbox_fd) as it:
        names = sorted(item.name for item in it if STAGING_RE.fullmatch(item.name))
    if not names:
        return moved
    with contextlib.suppress(FileExistsError):
        os.mkdir(STALE, 0o700, dir_fd=study_fd)
    stale_fd = os.open(STALE, fsops.DIR_FLAGS, dir_fd=study_fd)
    try:
        for name in names:
            try:
                fd = os.open(name, fsops.DIR_FLAGS, dir_fd=inbox_fd)
            except OSError:
                continue  # gone, or not a real folder: not ours to judge
            try:
                owner = os.fstat(fd).st_uid
                idle_s = (now_ns - newest_change_ns(fd, [_WALK_CAP])) / 1e9
            finally:
                os.close(fd)
            if idle_s < stale_after:
                continue
            try:
                fscaps.rename_noreplace(inbox_fd, name, stale_fd, name)
            except OSError as exc:
                log.warning("janitor: could not move %s aside: %s", name, exc)
                continue
            os.fsync(stale_fd)
            log.warning(
                "janitor: moved the abandoned upload %s of %s (idle %.0f s) to %s/",
                name,
                user_name(owner),
                idle_s,
                STALE,
            )
            moved.append(name)
    finally:
        os.close(stale_fd)
    return moved
