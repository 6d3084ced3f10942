"""Publish: put verified copies into the study tree without ever overwriting anything.

For each file, at the path it was sent as:
- the same content (sha256) already stored for that path, under any version name → nothing is
  written, the ledger records a ``duplicate``;
- otherwise the copy is moved from the private staging folder to the first free name of
  ``name``, ``name~2.ext``, ``name~3.ext`` ... with ``renameat2(RENAME_NOREPLACE)``, which fails
  instead of replacing; where the file system refuses that flag (NFS, CephFS answer EINVAL), a
  ``link()`` (which never replaces either) followed by unlinking the staged name.
Whatever stands in the way — a file, a folder, a dangling symlink — is never touched: the next
name is tried. A folder component in the way (say a file named like the folder) gets the same
treatment (``raw~2/``). Folders are reached from the destination's fd one component at a time
with ``O_NOFOLLOW|O_DIRECTORY``, so no symlink in the tree is ever followed.

Replays after a crash are exact: a staged copy that is gone was renamed, and is found again by
its inode among the names it could have taken, so no version is ever stored twice.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass

from dittohead.core.errors import OutOfSpace
from dittohead.core.versions import candidate_names, version_name
from dittohead.receiver import fsops
from dittohead.receiver.ledger import Ledger, Outcome, Record
from dittohead.receiver.verify import StagedFile

log = logging.getLogger(__name__)

#: Linux ignores S_ISGID in mkdir()'s mode anyway (folders inherit it from the 2750
#: destination), and asking for it would be refused by the unit's RestrictSUIDSGID= filter.
DIR_MODE = 0o750
#: how many taken names past the last one we look at when searching for a renamed copy
_SEARCH_SLACK = 16


@dataclass(frozen=True)
class Upload:
    """Who and what, for the ledger."""

    upload: str
    uploader: str
    uid: int
    source: str
    received_at: str
    recorded_at: str


class TreeDirs:
    """Folders of the destination, opened beneath its root fd, with versioned components."""

    def __init__(self, dest_fd: int) -> None:
        self.dest_fd = dest_fd
        self._fds: dict[str, tuple[int, str]] = {"": (dest_fd, "")}

    def open(self, rel_dir: str) -> tuple[int, str]:
        """An fd for the folder that `rel_dir` (as sent) lives in, and its stored path."""
        if rel_dir in self._fds:
            return self._fds[rel_dir]
        parent, _, name = rel_dir.rpartition("/")
        parent_fd, parent_stored = self.open(parent)
        for _, candidate in candidate_names(name):
            try:
                os.mkdir(candidate, DIR_MODE, dir_fd=parent_fd)
            except FileExistsError:
                pass
            except OSError as exc:
                _raise_space(exc)
                raise
            try:
                fd = os.open(candidate, fsops.DIR_FLAGS, dir_fd=parent_fd)
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    continue  # a file or symlink stands there: never touch it, take the next
                raise
            stored = f"{parent_stored}/{candidate}" if parent_stored else candidate
            self._fds[rel_dir] = (fd, stored)
            return fd, stored
        raise AssertionError("unreachable")  # pragma: no cover

    def sync(self) -> None:
        for fd, _ in self._fds.values():
            os.fsync(fd)

    def close(self) -> None:
        for fd, _ in self._fds.values():
            if fd != self.dest_fd:
                os.close(fd)
        self._fds = {"": (self.dest_fd, "")}


def _raise_space(exc: OSError) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise OutOfSpace("the study's destination is out of space") from exc


def _move_noreplace(staging_fd: int, staged: str, dir_fd: int, name: str) -> bool:
    """Move staged → name unless name exists. True when moved, False when taken."""
    try:
        fsops.renameat2(staging_fd, staged, dir_fd, name, noreplace=True)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            _raise_space(exc)
            raise
    # The file system refuses RENAME_NOREPLACE: link() never replaces either.
    try:
        os.link(staged, name, src_dir_fd=staging_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as exc:
        _raise_space(exc)
        raise
    os.unlink(staged, dir_fd=staging_fd)
    return True


def _find_moved(dir_fd: int, base: str, dev: int, ino: int) -> str | None:
    """The name a staged copy (dev, ino) was renamed to, if it was (crash replay)."""
    misses = 0
    for _, name in candidate_names(base):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            misses += 1
            if misses > _SEARCH_SLACK:
                return None
            continue
        except NotADirectoryError:
            continue
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (dev, ino):
            return name
    return None  # pragma: no cover


def exists(dir_fd: int, name: str) -> bool:
    """Whether `name` is in `dir_fd` (as itself: a symlink is not followed)."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def publish_file(
    tree: TreeDirs,
    staging_fd: int,
    ledger: Ledger,
    up: Upload,
    item: StagedFile,
) -> Record:
    """Publish one staged file (idempotent) and queue its ledger record."""
    done = ledger.recorded(up.upload, item.path)
    if done is not None:
        return _record(up, item, *done)
    existing = ledger.stored_version(item.path, item.sha256)
    if existing is not None:
        record = _record(up, item, existing, "duplicate")
        ledger.append(record)
        return record
    rel_dir, _, base = item.path.rpartition("/")
    dir_fd, stored_dir = tree.open(rel_dir)
    try:
        for _, name in candidate_names(base):
            if _move_noreplace(staging_fd, item.staged, dir_fd, name):
                break
    except FileNotFoundError:
        # The rename looks the staged copy up before the target, so ENOENT means the copy is
        # gone (asked again to be sure): moved by a run that crashed before recording it.
        # Find it by its inode. (No stat before every move: replays are the rare case.)
        if exists(staging_fd, item.staged):
            raise
        found = _find_moved(dir_fd, base, os.fstat(staging_fd).st_dev, item.ino)
        if found is None:
            raise RuntimeError(
                f"staged copy of {item.path!r} is gone and was not published; see the journal"
            ) from None
        name = found
    stored_as = f"{stored_dir}/{name}" if stored_dir else name
    record = _record(up, item, stored_as, "stored")
    ledger.append(record)
    log.debug("stored %s as %s", item.path, stored_as)
    return record


def _record(up: Upload, item: StagedFile, stored_as: str, outcome: Outcome) -> Record:
    return Record(
        upload=up.upload,
        uploader=up.uploader,
        uid=up.uid,
        source=up.source,
        path=item.path,
        stored_as=stored_as,
        size=item.size,
        sha256=item.sha256,
        outcome=outcome,
        received_at=up.received_at,
        recorded_at=up.recorded_at,
    )


def make_dirs(tree: TreeDirs, dirs: tuple[str, ...]) -> None:
    """Mirror the entry's folders (empty ones included) into the tree."""
    for rel in dirs:
        tree.open(rel)


__all__ = ["TreeDirs", "Upload", "exists", "make_dirs", "publish_file", "version_name"]
