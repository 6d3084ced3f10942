"""The commit: make a verified staging entry durable, publish it in the inbox, tell the processor.

Order matters, and is the whole point of this module:

1. ``syncfs`` on the entry's file system: every file and folder of the entry reaches the disk
   (one call instead of a fsync per file, which costs tens of seconds for 50,000 files:
   docs/design.md, "Performance by design");
2. ``renameat2(.<entry> → <entry>, RENAME_NOREPLACE)``: the processor only ever looks at names
   without the leading dot, so it never sees a half-written entry, and the rename cannot
   replace anything;
3. ``syncfs`` again, so that the rename itself is on disk before the receipt says so: a
   receipt is a promise that nothing will be lost.

Where the file system lacks RENAME_NOREPLACE or an honest ``syncfs`` (a cluster file system
over FUSE: `fscaps`), step 2 is a plain ``rename`` (see `publish` for why that is safe here), and
steps 1 and 3 fsync the entry's files and folders one by one.

Then the processor is poked on its socket. The poke is only a hint (the processor also rescans
on a timer), so any failure there is logged and otherwise ignored.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from pathlib import Path

from dittohead.core.errors import ServerError
from dittohead.core.receipt import Receipt
from dittohead.receiver import fscaps, fsops
from dittohead.receiver.upload.gate import Admission
from dittohead.receiver.upload.stage import Staged, Staging

log = logging.getLogger(__name__)

POKE = b"poke\n"
POKE_TIMEOUT = 2.0


def publish(staging: Staging) -> None:
    """Sync, rename ``.<entry>`` to ``<entry>`` without replacing anything, sync again."""
    assert staging.fd is not None
    fscaps.sync_tree(staging.fd)
    taken = ServerError(
        f"an upload named {staging.entry} already exists; nothing was stored. Send again"
    )
    try:
        if fscaps.native(staging.fd, "rename_noreplace"):
            try:
                fsops.renameat2(
                    staging.inbox_fd, staging.dot_entry, staging.inbox_fd, staging.entry
                )
            except OSError as exc:
                if not fscaps.refusal(exc):
                    raise
                fscaps.refused(staging.fd, "rename_noreplace", "renameat2 refused the commit")
            else:
                staging.committed = True
        if not staging.committed:
            # A plain rename is still safe here (fscaps' placeholder scheme is not: the
            # processor would take an empty placeholder for an upload): the name is
            # unguessable, rename(2) never replaces a non-empty folder, and in the sticky
            # inbox it may not replace another user's folder either; so at worst it replaces
            # an empty folder of this same user, which cannot hold data.
            os.rename(
                staging.dot_entry, staging.entry, src_dir_fd=staging.inbox_fd,
                dst_dir_fd=staging.inbox_fd,
            )  # fmt: skip
            staging.committed = True
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise taken from None
        raise
    # The entry fd still names the same folder after the rename: same file system. Without an
    # honest syncfs, the rename is made durable by a fsync of the entry itself: the inbox
    # cannot be opened by a collector to fsync it (3773: no read), and a brick's journaling
    # file system (ext4, XFS) commits the rename with the journal that fsync forces.
    fscaps.sync_written(staging.fd, ())


def poke(path: Path) -> None:
    """Tell the processor that something may have arrived; never fails the upload."""
    try:
        # Inside the try: exists() raises (not False) when the socket's folder is not
        # searchable by this collector, and the upload is already committed by now.
        if not path.exists():
            log.debug("no processor socket at %s; its next rescan finds the upload", path)
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(POKE_TIMEOUT)
            sock.connect(str(path))
            sock.sendall(POKE)
    except OSError as exc:
        log.debug("could not poke the processor at %s: %s", path, exc)


def utc_now() -> str:
    """The server's clock, ISO 8601 UTC (``2024-05-01T12:00:00Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def commit(admission: Admission, staging: Staging, staged: Staged) -> Receipt:
    """Publish the staged entry, poke the processor and return the receipt to print."""
    publish(staging)
    received_at = utc_now()
    log.debug("committed %s (%d files, %d bytes)", staged.entry, staged.files, staged.bytes)
    poke(admission.settings.socket)
    return Receipt(
        upload=staged.entry,
        study=admission.request.study,
        source=admission.request.source,
        user=admission.user,
        files=staged.files,
        bytes=staged.bytes,
        manifest_sha256=staged.manifest_sha256,
        received_at=received_at,
    )
