"""What each file system offers, found out at run time, and the fallbacks where it lacks it.

The receiver and the processor rely on a few Linux primitives that not every file system has:
``renameat2(RENAME_NOREPLACE)`` (GlusterFS over FUSE answers EINVAL when the target does not
exist; NFS and CephFS answer EINVAL or ENOTSUP), ``O_TMPFILE`` (FUSE: ENOTSUP), an honest
``syncfs`` (FUSE: the call succeeds, but no FSYNC reaches GlusterFS's bricks, measured in
docs/admins/scale-out.md), ``openat2`` and ``sync_file_range``. Each has a fallback here that
keeps the same guarantee: nothing is ever overwritten, nothing is called durable that is not.

The mode is decided per file system (per ``st_dev``, kept by `fsmodes`, which `fsops` asks too):
``syncfs`` by the mount's type (any ``fuse.*``), the others on the first refusal (EINVAL,
ENOTSUP/EOPNOTSUPP, ENOSYS), and logged once, one INFO line naming the folder, the file system and
the fallback. A developer without a cluster file system forces every fallback everywhere with the
environment variable ``DITTOHEAD_FS_FALLBACKS=1`` (a test and development switch, not an admin
setting: an environment variable needs no config key in both the full and the receiver's checked
copy, and it reaches the receiver, which sshd starts, only where a test sets it).

`probe` tries every primitive in a folder for real (in a temporary folder it removes again), for
``dittohead-admin check``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dittohead.receiver import fsops
from dittohead.receiver.fsmodes import (
    FALLBACKS,
    FORCE_ENV,
    PRIMITIVES,
    Primitive,
    errno_name,
    forced,
    forget,
    is_fuse,
    mount_of,
    native,
    refusal,
    refused,
)

__all__ = [
    "FALLBACKS",
    "FORCE_ENV",
    "PLACEHOLDER_MODE",
    "PRIMITIVES",
    "Found",
    "Primitive",
    "create_new",
    "describe",
    "forced",
    "forget",
    "is_placeholder",
    "native",
    "ofd_lock",
    "probe",
    "refusal",
    "refused",
    "remove_placeholder",
    "rename_noreplace",
    "sync_tree",
    "sync_written",
]

#: the mode of a folder made to reserve a name (see `rename_noreplace`): no collector's entry
#: ever has it (the receiver makes them 2770), so a leftover one is known for what it is
PLACEHOLDER_MODE = 0o000


def rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """Rename `src` to `dst`, or FileExistsError when `dst` exists; never replaces anything.

    Natively one ``renameat2(RENAME_NOREPLACE)``. Where the file system refuses the flag:

    - a file (or symlink) is linked to `dst` (``link()`` fails with EEXIST, never replaces) and
      its old name unlinked. A crash in between leaves both names on one inode; run again,
      the link finds `dst` taken by that same inode and finishes the move by unlinking `src`.
    - a folder cannot be linked, and ``rename()`` of a folder replaces an *empty* folder
      standing at `dst`. So the name is first reserved with ``mkdir(dst, 0000)`` (which fails
      with EEXIST when anything stands there), and only then is `src` renamed onto that
      placeholder: the one thing ``rename()`` can replace then is the empty folder just made.
      This holds only in a folder where every writer follows the same rule, and that is the
      case wherever the processor moves folders: ``processing/``, ``done/``, ``quarantine/``
      and ``stale/`` are dittohead's 0700 folders, so no collector can create, fill or swap
      a name there; only processors (on any host) can, and they reserve names the same way.
      A placeholder is recognizable (an empty folder of the processor's own uid with mode
      0000: no collector's entry is ever that), so one that a crash left between the mkdir and
      the rename is taken again by the next move to that name (`_adopt`), or removed
      (`remove_placeholder`). Never use this for the inbox (anyone may create names there,
      and the processor would see the placeholder as an upload: the receiver's commit has
      its own rule) nor for the study tree (the processor's `TreeDirs` may be filling a
      folder of that name at that moment: publish moves folders whole only natively).
    """

    if native(dst_dir, "rename_noreplace"):
        try:
            fsops.renameat2(src_dir, src, dst_dir, dst, noreplace=True)
            return
        except OSError as exc:
            if not refusal(exc):
                raise
            refused(dst_dir, "rename_noreplace", "renameat2 answered " + errno_name(exc))
    st = os.stat(src, dir_fd=src_dir, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        _rename_folder(src_dir, src, dst_dir, dst)
        return
    try:
        os.link(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
    except FileExistsError:
        there = os.stat(dst, dir_fd=dst_dir, follow_symlinks=False)
        if (there.st_dev, there.st_ino) != (st.st_dev, st.st_ino):
            raise
        # Linked by a move that was killed before its unlink: finish it.
    os.unlink(src, dir_fd=src_dir)


def _rename_folder(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    try:
        os.mkdir(dst, PLACEHOLDER_MODE, dir_fd=dst_dir)
    except FileExistsError:
        if not is_placeholder(dst_dir, dst):
            raise
    try:
        os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
    except OSError as exc:
        remove_placeholder(dst_dir, dst)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
        raise


def is_placeholder(dir_fd: int, name: str) -> bool:
    """Whether `name` in `dir_fd` is a placeholder `rename_noreplace` made and a crash left:
    an empty folder of this process's uid with mode 0000."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and stat.S_IMODE(st.st_mode) == PLACEHOLDER_MODE
        and st.st_uid == os.geteuid()
        and st.st_nlink <= 2
    )


def remove_placeholder(dir_fd: int, name: str) -> bool:
    """Remove `name` if it is a leftover placeholder (rmdir removes only an empty folder, so
    whatever was renamed onto it in the meantime stays). True when one was removed."""
    if not is_placeholder(dir_fd, name):
        return False
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    return True


def sync_tree(fd: int) -> None:
    """Make every file and folder beneath folder `fd` durable: one ``syncfs`` where it is
    honest, else a fsync of each file and folder beneath `fd` (for a tree only the caller
    writes and of bounded size: an entry being staged or committed, never a study tree)."""

    if native(fd, "syncfs"):
        fsops.syncfs(fd)
        return
    for name in os.listdir(fd):
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(name, fsops.DIR_FLAGS, dir_fd=fd)
            try:
                sync_tree(sub)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            with fsops.opened(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd) as file_fd:
                os.fsync(file_fd)
    os.fsync(fd)


def sync_written(fd: int, written: Iterable[int]) -> None:
    """Make what was just written on `fd`'s file system durable: one ``syncfs`` where it is
    honest, else a fsync of `fd` and of each of the `written` fds (the files and folders the
    caller wrote or renamed into since the last sync)."""

    if native(fd, "syncfs"):
        fsops.syncfs(fd)
        return
    os.fsync(fd)
    for other in written:
        os.fsync(other)


def create_new(dir_fd: int, name: str, chunks: Iterable[bytes], mode: int = 0o600) -> None:
    """Create file `name` in `dir_fd` with the concatenated `chunks`, durable, or
    FileExistsError when the name is taken; it appears whole or not at all.

    Natively an ``O_TMPFILE`` written, given `mode`, fsynced, then linked to `name` (``link()``
    never replaces). Where the file system has no ``O_TMPFILE``: a temporary file
    ``.<name>.<pid>.tmp`` beside it (``O_EXCL``), written, synced, linked to `name`, then
    unlinked; a process killed before the unlink leaves it for
    `fsops.remove_leftover_temps`, which knows that name. The folder is fsynced after."""

    if native(dir_fd, "tmpfile"):
        try:
            fd = os.open(".", fsops.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            if not (refusal(exc) or exc.errno == errno.EISDIR):  # EISDIR: kernel < 3.11
                raise
            refused(dir_fd, "tmpfile", "O_TMPFILE answered " + errno_name(exc))
        else:
            try:
                _fill(fd, chunks, mode)
                fsops.link_tmpfile(fd, dir_fd, name)
            finally:
                os.close(fd)
            os.fsync(dir_fd)
            return
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    tmp = f".{name}.{os.getpid()}{fsops.TEMP_SUFFIX}"
    try:
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        # Left by a killed process that had our pid (on this host or another one sharing
        # the folder): take a name of our own, which the janitor also knows.
        tmp = f".{name}.{os.getpid()}{int.from_bytes(os.urandom(4)):010d}{fsops.TEMP_SUFFIX}"
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
    try:
        try:
            _fill(fd, chunks, mode)
        finally:
            os.close(fd)
        os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    finally:
        os.unlink(tmp, dir_fd=dir_fd)
    os.fsync(dir_fd)


def _fill(fd: int, chunks: Iterable[bytes], mode: int) -> None:

    os.fchmod(fd, mode)
    for chunk in chunks:
        fsops.write_all(fd, chunk)
    os.fsync(fd)


@dataclass(frozen=True, slots=True)
class Found:
    """What `probe` found in one folder: per primitive, native (True) or fallback (False);
    whether fcntl locks work there; whether POSIX ACLs can be set (the processor grants each
    uploader their outcomes/ folder by one; a GlusterFS mount without ``-o acl`` refuses)."""

    modes: dict[Primitive, bool]
    locks: bool
    fstype: str
    acls: bool = True


def probe(dir_fd: int) -> Found:
    """Try each primitive in a temporary folder made in `dir_fd` (removed again, whatever
    happens): which of them the file system offers, and whether a fcntl lock taken there is
    seen by a second open file description (two processors on two hosts meet that way)."""

    mount = mount_of(os.fstat(dir_fd).st_dev)
    fstype = mount.fstype if mount else "?"
    name = f".dittohead-probe-{os.urandom(6).hex()}"
    os.mkdir(name, 0o700, dir_fd=dir_fd)
    try:
        tmp = os.open(name, fsops.DIR_FLAGS, dir_fd=dir_fd)
        try:
            return Found(_probe_modes(tmp), _probe_locks(tmp), fstype, _probe_acls(tmp))
        finally:
            _empty(tmp)
            os.close(tmp)
    finally:
        os.rmdir(name, dir_fd=dir_fd)


def _probe_modes(fd: int) -> dict[Primitive, bool]:

    modes: dict[Primitive, bool] = {}
    force = forced()  # probe what is there, but report what will be used
    with fsops.opened("a", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd) as a:
        os.write(a, b"x")
        modes["sync_file_range"] = fsops.start_writeback(a, 0, 1)
    try:
        fsops.renameat2(fd, "a", fd, "b", noreplace=True)
        modes["rename_noreplace"] = not force
    except OSError as exc:
        if not refusal(exc):
            raise
        modes["rename_noreplace"] = False
    try:
        os.close(os.open(".", fsops.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=fd))
        modes["tmpfile"] = not force
    except OSError as exc:
        if not (refusal(exc) or exc.errno == errno.EISDIR):
            raise
        modes["tmpfile"] = False
    modes["syncfs"] = not force and not is_fuse(fd)
    try:
        flags = os.O_RDONLY | os.O_DIRECTORY
        os.close(fsops.openat2(fd, ".", flags, resolve=fsops.RESOLVE_BENEATH))
        modes["openat2"] = not force
    except OSError as exc:
        if not refusal(exc):
            raise
        modes["openat2"] = False
    return modes


def _probe_locks(fd: int) -> bool:
    """Lock a file through one open file description; see the lock from a second one. OFD
    locks (``F_OFD_SETLK``) conflict between descriptions even in one process, as two hosts'
    locks must; a file system that keeps locks local to its client would show no conflict
    here either way, so this proves the lock works, and the cluster tier proves it across
    two mounts."""
    first = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=fd)
    try:
        second = os.open("lock", os.O_RDWR | os.O_CLOEXEC, dir_fd=fd)
        try:
            try:
                ofd_lock(first, blocking=False)
            except OSError as exc:
                if refusal(exc) or exc.errno == errno.ENOLCK:
                    return False
                raise
            try:
                ofd_lock(second, blocking=False)
            except BlockingIOError:
                return True
            return False
        finally:
            os.close(second)
    finally:
        os.close(first)


def _probe_acls(fd: int) -> bool:
    with _opened_new(fd, "acl") as file_fd:
        try:
            os.setxattr(file_fd, "system.posix_acl_access", fsops.acl_xattr(0o6, os.geteuid(), 0o4))
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
                return False
            raise
    return True


@contextmanager
def _opened_new(dir_fd: int, name: str) -> Iterator[int]:
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


F_OFD_SETLK = 37
F_OFD_SETLKW = 38


def ofd_lock(fd: int, *, blocking: bool = True, exclusive: bool = True) -> None:
    """Lock the whole file `fd` as an open file description lock (``F_OFD_SETLK[W]``): it
    belongs to the description, not the process, so two descriptions conflict even in one
    process, and it goes with the last close. BlockingIOError when taken and not `blocking`."""
    import struct

    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    # struct flock: l_type, l_whence (short); l_start, l_len (off_t); l_pid (int, 0 for OFD)
    lock = struct.pack("hhqqi4x", kind, os.SEEK_SET, 0, 0, 0)
    try:
        fcntl.fcntl(fd, F_OFD_SETLKW if blocking else F_OFD_SETLK, lock)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise BlockingIOError(exc.errno, "locked by another") from None
        raise


def _empty(fd: int) -> None:
    for name in os.listdir(fd):
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)


def describe(found: Found) -> Iterable[str]:
    """One word per primitive and for locking, for check's table."""
    for what in PRIMITIVES:
        yield f"{what}={'native' if found.modes[what] else 'fallback'}"
    yield "fcntl-locks=" + ("work" if found.locks else "DO NOT WORK")
    yield "acls=" + ("work" if found.acls else "REFUSED")
