"""Safe file-system primitives, all relative to directory file descriptors.

Everything the receiver and the processor do to the disk goes through these few functions, so
that the rules are in one place: never follow a symlink, never overwrite, never resolve a path
from the root when a held directory fd can be used instead. The Linux-only calls that Python
does not wrap (``renameat2``, ``openat2``, ``syncfs``, ``sync_file_range``) are reached through
ctypes. Where a file system lacks one of them (a cluster file system over FUSE or NFS), the
functions here fall back to a way that keeps the same guarantee; `fscaps` finds out which
file system needs which, once per file system, and says so once in the log.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import stat
import struct
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from dittohead.receiver import fsmodes


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library the interpreter already has loaded: no ldconfig run (find_library would
    start one at every start of the receiver and the processor), nothing resolved from a path."""
    return ctypes.CDLL(None, use_errno=True)


def _errno() -> int:
    return ctypes.get_errno()


AT_FDCWD = -100
RENAME_NOREPLACE = 1
AT_SYMLINK_FOLLOW = 0x400
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437  # same number on every architecture (added after the syscall-table unification)
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "riscv64": 276, "ppc64le": 357, "s390x": 347}

O_PATH = getattr(os, "O_PATH", 0o10000000)
O_TMPFILE = getattr(os, "O_TMPFILE", 0o20000000 | os.O_DIRECTORY)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _raise_errno(what: str, path: str | None = None) -> None:
    err = _errno()
    raise (
        OSError(err, os.strerror(err), path)
        if path
        else OSError(err, f"{what}: {os.strerror(err)}")
    )


def renameat2(src_dir: int, src: str, dst_dir: int, dst: str, *, noreplace: bool = True) -> None:
    """Rename that fails with EEXIST when `dst` exists (``RENAME_NOREPLACE``).

    Raises OSError(EINVAL) where the file system refuses the flag (NFS, CephFS); callers fall
    back to a link-based scheme that keeps the same no-overwrite guarantee.
    """
    flags = RENAME_NOREPLACE if noreplace else 0
    func = getattr(_libc(), "renameat2", None)
    if func is not None:
        result = func(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), flags)
    else:  # pragma: no cover - glibc < 2.28
        number = _SYS_RENAMEAT2.get(os.uname().machine)
        if number is None:
            raise OSError(errno.ENOSYS, "renameat2 is not available")
        result = _libc().syscall(
            number, src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), flags
        )
    if result != 0:
        _raise_errno("renameat2", dst)


@functools.cache
def _open_how() -> type[ctypes.Structure]:
    """``struct open_how`` of openat2(2)."""

    class OpenHow(ctypes.Structure):
        _fields_ = [
            ("flags", ctypes.c_uint64),
            ("mode", ctypes.c_uint64),
            ("resolve", ctypes.c_uint64),
        ]

    return OpenHow


# Whether this kernel has openat2 (None: not tried yet). A dict so no `global` is needed.
_kernel: dict[str, bool] = {}


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0, *, resolve: int) -> int:
    """``openat2(2)``; raises OSError(ENOSYS) where the kernel lacks it."""
    how = _open_how()(flags, mode, resolve)
    fd = _libc().syscall(
        _SYS_OPENAT2,
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        _raise_errno("openat2", path)
    return int(fd)


def open_beneath(root_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """Open `path` strictly beneath `root_fd`, following no symlink on the way.

    Uses ``openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)``; where the kernel lacks it, walks one
    component at a time with ``O_NOFOLLOW|O_DIRECTORY``. Either way a symlink anywhere in the
    path (or as the final component) fails with ELOOP/ENOTDIR instead of being followed.
    """
    if path in ("", "."):
        return os.open(".", flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=root_fd)
    if _kernel.get("openat2", True) and fsmodes.native(root_fd, "openat2"):
        try:
            fd = openat2(
                root_fd,
                path,
                flags | os.O_NOFOLLOW | os.O_CLOEXEC,
                mode,
                resolve=RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
            )
            _kernel["openat2"] = True
            return fd
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            _kernel["openat2"] = False
            fsmodes.refused(root_fd, "openat2", "the kernel lacks it")
    return _walk_open(root_fd, path, flags, mode)


def _walk_open(root_fd: int, path: str, flags: int, mode: int) -> int:
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise OSError(errno.EXDEV, "path escapes its root", path)
    current = root_fd
    try:
        for part in parts[:-1]:
            nxt = os.open(part, DIR_FLAGS, dir_fd=current)
            if current != root_fd:
                os.close(current)
            current = nxt
        fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=current)
        if flags & O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode):
            # O_PATH|O_NOFOLLOW opens the symlink itself; RESOLVE_NO_SYMLINKS refuses it.
            os.close(fd)
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        return fd
    finally:
        if current != root_fd:
            os.close(current)


def makedirs_beneath(root_fd: int, path: str, mode: int) -> int:
    """Create (as needed) and open directory `path` beneath `root_fd`, one component at a time.

    Returns an fd for the directory. Never follows a symlink: a symlink, file or anything else
    already standing where a directory is wanted raises OSError(ENOTDIR/ELOOP).
    """
    current = os.dup(root_fd)
    try:
        for part in path.split("/") if path else []:
            if part in ("", ".", ".."):
                raise OSError(errno.EXDEV, "path escapes its root", path)
            with suppress(FileExistsError):
                os.mkdir(part, mode, dir_fd=current)
            nxt = os.open(part, DIR_FLAGS, dir_fd=current)
            os.close(current)
            current = nxt
        return current
    except BaseException:
        os.close(current)
        raise


def syncfs(fd: int) -> None:
    """Flush the whole file system that `fd` lives on (one call instead of a fsync per file)."""
    if _libc().syncfs(fd) != 0:
        _raise_errno("syncfs")


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of `data` to `fd` (``os.write`` may take less than it is given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


#: what the temporary files of `replace_file` end with (after ``.<name>.<pid>``)
TEMP_SUFFIX = ".tmp"


def remove_leftover_temps(folder: Path) -> list[str]:
    """Remove the temporary files `replace_file` left in `folder` when its process was killed
    between creating and renaming one; the names removed. Only for a folder whose one writer
    is the caller (the processor's journal and ledger summaries, under its lock): a temporary
    file there belongs to a process that is gone."""
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return removed
    for name in names:
        head, _, pid = name[: -len(TEMP_SUFFIX)].rpartition(".")
        if name.startswith(".") and name.endswith(TEMP_SUFFIX) and head and pid.isdigit():
            with suppress(FileNotFoundError):
                os.unlink(folder / name)
            removed.append(name)
    return removed


def replace_file(
    target: Path,
    chunks: Iterable[bytes | bytearray],
    *,
    mode: int = 0o600,
    gid: int | None = None,
    sync_folder: bool = False,
) -> None:
    """Replace `target` with the concatenated `chunks` so that a crash leaves the old content or
    the new, never part of it: a temporary file beside it (never through a link), written,
    given `mode` (and group `gid`), synced, renamed over `target`; removed if anything fails.
    With `sync_folder` the folder is fsynced too, for a rename that must be durable at once."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            if gid is not None:
                os.fchown(fd, -1, gid)
            os.fchmod(fd, mode)
            for chunk in chunks:
                write_all(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_folder:
        fsync_folder(target.parent)


class SyncAhead:
    """`syncfs` of `fd`'s file system in a background thread, started now and then while a
    long run of writes goes on, so that the `syncfs` which must follow them finds little left.

    Only a head start: the caller's own `syncfs` afterwards is what makes the data durable.
    `finish` waits for the thread and raises the error it met: a writeback error is reported
    once per open file, so one seen by the background call would otherwise be lost to the
    caller's `syncfs` on the same fd. Call `finish` before closing `fd`.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None

    def start(self) -> None:
        """Start a background `syncfs`, unless one is still running."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="dittohead-syncfs", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            syncfs(self._fd)  # a ctypes call: the GIL is released while the kernel writes
        except OSError as exc:
            self._error = exc

    def finish(self) -> None:
        """Wait for the background `syncfs`; raise what it failed with."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4


@functools.cache
def _sync_file_range() -> ctypes._NamedFuncPointer | None:
    func = getattr(_libc(), "sync_file_range", None)
    if func is not None:
        func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        func.restype = ctypes.c_int
    return func


def start_writeback(fd: int, offset: int, count: int, *, wait: bool = False) -> bool:
    """Start writing bytes ``[offset, offset + count)`` of `fd` to disk now, in the background
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``); with `wait`, first wait for any writeback of
    that range already under way (``SYNC_FILE_RANGE_WAIT_BEFORE``).

    Only a head start, never durability: it flushes no metadata and no disk cache, so the
    `syncfs` before a commit stays. Without it a machine with plenty of memory keeps a whole
    upload dirty in the page cache and that `syncfs` writes all of it at the end. Returns False
    where the call is not available (e.g. ENOSYS, or a file system that refuses it), so the
    caller can stop asking.
    """
    func = _sync_file_range()
    if func is None or fsmodes.forced():
        return False
    flags = SYNC_FILE_RANGE_WRITE | (SYNC_FILE_RANGE_WAIT_BEFORE if wait else 0)
    if func(fd, offset, count, flags) != 0:
        err = _errno()
        if err in (errno.ENOSYS, errno.EINVAL, errno.ESPIPE, errno.EOPNOTSUPP):
            return False
        raise OSError(err, f"sync_file_range: {os.strerror(err)}")
    return True


def grow_pipe(fd: int, size: int) -> int | None:
    """Ask for a pipe buffer of `size` bytes on `fd` (``F_SETPIPE_SZ``); the size the kernel
    granted, or None where `fd` is no pipe or the request is refused (over
    ``fs.pipe-max-size``, or the user's pipe-buffer quota): then the buffer stays as it was."""
    try:
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except OSError:
        return None


def link_tmpfile(tmp_fd: int, dir_fd: int, name: str) -> None:
    """Give an ``O_TMPFILE`` inode the name `name` in `dir_fd`; EEXIST if the name is taken.

    ``linkat`` never replaces an existing name, so this is a no-overwrite publish. The
    ``/proc/self/fd`` form works without CAP_DAC_READ_SEARCH (which ``AT_EMPTY_PATH`` needs).
    """
    os.link(f"/proc/self/fd/{tmp_fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)


def fsync_dir(fd: int) -> None:
    os.fsync(fd)


def fsync_folder(path: str | os.PathLike[str]) -> None:
    """fsync the folder at `path`, so that the names just created or renamed in it last."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def opened(path: str, flags: int, mode: int = 0, *, dir_fd: int | None = None) -> Iterator[int]:
    fd = os.open(path, flags | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def is_plain_dir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode)


def is_plain_file(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)


def free_bytes(fd: int) -> int:
    """Bytes an unprivileged user may still write on the file system `fd` lives on.

    Works on ``O_PATH`` fds (``fstatfs`` accepts them), so a directory that may not be read,
    such as a 3773 inbox, can still be asked.
    """
    st = os.statvfs(fd)
    return st.f_bavail * st.f_frsize


#: the access ACL xattr (linux/posix_acl_xattr.h) and its tags
ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF


def acl_xattr(owner: int, uid: int, perm: int) -> bytes:
    """The ACL ``user::<owner>,user:<uid>:<perm>,group::---,mask::<perm>,other::---`` in the
    kernel's xattr format (entries sorted by tag, then id, as the kernel requires)."""
    entries = [
        (_USER_OBJ, owner, _UNDEFINED_ID),
        (_USER, perm, uid),
        (_GROUP_OBJ, 0, _UNDEFINED_ID),
        (_MASK, perm, _UNDEFINED_ID),
        (_OTHER, 0, _UNDEFINED_ID),
    ]
    return struct.pack("<I", _ACL_VERSION) + b"".join(
        struct.pack("<HHI", tag, p, ident) for tag, p, ident in entries
    )
