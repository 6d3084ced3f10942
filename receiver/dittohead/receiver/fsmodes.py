"""Which file-system primitives each file system offers, found at run time (see `fscaps`).

A leaf module, so that `fsops` and `fscaps` can both ask it: per file system (per
``st_dev``), whether a primitive is known to be refused there, decided on its first refusal
(or, for ``syncfs``, by the mount's type), with one INFO line the first time; and whether the
fallbacks are forced everywhere (``DITTOHEAD_FS_FALLBACKS=1``).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

#: set to 1 to use every fallback on every file system (tests, development)
FORCE_ENV = "DITTOHEAD_FS_FALLBACKS"

Primitive = Literal["rename_noreplace", "tmpfile", "syncfs", "openat2", "sync_file_range"]
PRIMITIVES: tuple[Primitive, ...] = (
    "rename_noreplace",
    "tmpfile",
    "syncfs",
    "openat2",
    "sync_file_range",
)
#: what each fallback is, in the log line and in ``dittohead-admin check``
FALLBACKS: dict[Primitive, str] = {
    "rename_noreplace": "link()+unlink() for files, mkdir() placeholder + rename() for folders",
    "tmpfile": "named temporary file, then link()",
    "syncfs": "fsync of each file and folder written",
    "openat2": "one component at a time with O_NOFOLLOW",
    "sync_file_range": "none (writeback left to the final sync)",
}
#: errnos by which a file system (or kernel) says it lacks a primitive
REFUSALS = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
#: the f_type of every FUSE mount (fuse and fuseblk alike)
FUSE_MAGIC = 0x65735546

_lock = threading.Lock()
#: (st_dev, forced) -> primitive -> native?  Absent: native until refused (syncfs: decided by
#: the mount's type on first use).
_modes: dict[tuple[int, bool], dict[Primitive, bool]] = {}


def forced() -> bool:
    """Whether the fallbacks are forced on every file system (``DITTOHEAD_FS_FALLBACKS=1``)."""
    return os.environ.get(FORCE_ENV, "") not in ("", "0")


@dataclass(frozen=True, slots=True)
class Mount:
    """The mount a device number belongs to, from /proc/self/mountinfo."""

    point: str
    fstype: str
    source: str


def mount_of(dev: int) -> Mount | None:
    """The mount of device `dev`, or None where mountinfo cannot tell."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    found: Mount | None = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                head, _, tail = line.partition(" - ")
                fields, rest = head.split(), tail.split()
                if len(fields) >= 5 and len(rest) >= 2 and fields[2] == want:
                    # Several lines for one device (bind mounts): any names the file system.
                    found = Mount(fields[4], rest[0], rest[1])
    except OSError:
        return None
    return found


def _describe(fd: int, dev: int) -> str:
    try:
        where = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        where = f"fd {fd}"
    mount = mount_of(dev)
    return f"{where} ({mount.fstype} {mount.source})" if mount else where


def native(fd: int, what: Primitive) -> bool:
    """Whether the file system `fd` lives on is known (or assumed) to offer `what` natively."""
    if forced():
        return False
    dev = os.fstat(fd).st_dev
    with _lock:
        known = _modes.get((dev, False), {}).get(what)
    if known is not None:
        return known
    if what == "syncfs":
        # Decided once per file system by its type (mountinfo is read once, not per sync).
        if is_fuse(fd):
            refused(fd, "syncfs", "a FUSE file system: syncfs reaches no server")
            return False
        with _lock:
            _modes.setdefault((dev, False), {}).setdefault("syncfs", True)
    return True


def is_fuse(fd: int) -> bool:
    mount = mount_of(os.fstat(fd).st_dev)
    return mount is not None and (mount.fstype == "fuse" or mount.fstype.startswith("fuse."))


def refused(fd: int, what: Primitive, why: str) -> None:
    """Note that the file system of `fd` lacks `what`; the first time, say so in one line."""
    dev = os.fstat(fd).st_dev
    with _lock:
        seen = _modes.setdefault((dev, forced()), {})
        first = seen.get(what) is not False
        seen[what] = False
    if first:
        log.info(
            "%s: %s not available (%s); using the fallback: %s",
            _describe(fd, dev),
            what,
            why,
            FALLBACKS[what],
        )


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def refusal(exc: OSError) -> bool:
    """Whether `exc` is a file system's way of saying it lacks a primitive."""
    return exc.errno in REFUSALS


def forget() -> None:
    """Forget every mode found (tests switch the forcing on and off)."""
    with _lock:
        _modes.clear()
