"""Publish: put verified copies into the study tree without ever overwriting anything.

The staging folder mirrors the entry (see `verify`). First, folders new to the tree arrive
whole (`move_new_folders`): a folder of the entry none of whose files is a duplicate or already
recorded is moved, with everything in it, by one ``renameat2(RENAME_NOREPLACE)`` to the first
free name of ``folder``, ``folder~2``, ... in its parent's place in the tree; every file under
it keeps its plain name there. Where a folder of that name already stands in the tree, nothing
is renamed onto it: its files are published one by one into it (and its subfolders may in turn
arrive whole). Then, for each file:
- it came with a moved folder → it is recorded there (``stored``);
- the same content (sha256) already stored for that path, under any version name → nothing is
  written, the ledger records a ``duplicate``;
- otherwise the copy is moved from the private staging folder to the first free name of
  ``name``, ``name~2.ext``, ``name~3.ext`` ... with ``renameat2(RENAME_NOREPLACE)``, which fails
  instead of replacing; where the file system refuses that flag (NFS, CephFS answer EINVAL), a
  ``link()`` (which never replaces either) followed by unlinking the staged name (folders are
  then never moved whole: they cannot be linked).
Whatever stands in the way — a file, a folder, a dangling symlink — is never touched: the next
name is tried. A folder component in the way (say a file named like the folder) gets the same
treatment (``raw~2/``), by the same rule whether the folder is moved whole or made by
`TreeDirs.open`. Folders are reached from the destination's fd one component at a time with
``O_NOFOLLOW|O_DIRECTORY``, so no symlink in the tree is ever followed.

Replays after a crash are exact: a staged copy that is gone was renamed — alone, or with a
folder above it — and is found again by its inode among the names it could have taken, in the
folder `TreeDirs.open` reaches for it (the moved folder: the candidate rule is the same), so no
version is ever stored twice. A folder moved by an earlier run is no longer in staging and is
not tried again; a folder with a record or a duplicate under it is never moved whole.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from dittohead.core.errors import OutOfSpace
from dittohead.core.versions import candidate_names, version_name
from dittohead.receiver import fscaps, fsops
from dittohead.receiver.processor.ledger import Ledger, Outcome, Record
from dittohead.receiver.processor.verify import StagedFile

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

    def fds(self) -> list[int]:
        """The folders opened so far (what a fsync-per-folder sync must cover)."""
        return [fd for fd, _ in self._fds.values()]

    def close(self) -> None:
        for fd, _ in self._fds.values():
            if fd != self.dest_fd:
                os.close(fd)
        self._fds = {"": (self.dest_fd, "")}


def _raise_space(exc: OSError) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise OutOfSpace("the study's destination is out of space") from exc


def _move_noreplace(staging_fd: int, staged: str, dir_fd: int, name: str) -> bool:
    """Move staged → name unless name exists. True when moved, False when taken (where the
    file system refuses RENAME_NOREPLACE, `fscaps` links and unlinks: never replaces either)."""
    try:
        fscaps.rename_noreplace(staging_fd, staged, dir_fd, name)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        _raise_space(exc)
        raise


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


class MovedFolders:
    """The folders of an entry that `move_new_folders` moved into the tree whole, this run."""

    def __init__(self) -> None:
        self.moved: dict[str, str] = {}  # folder as sent -> its stored path (outermost ones)
        self._dirs: dict[str, str | None] = {"": None}

    def add(self, rel: str, stored: str) -> None:
        self.moved[rel] = stored
        self._dirs = {"": None}

    def stored_dir(self, rel_dir: str) -> str | None:
        """Where folder `rel_dir` (as sent) is stored if it came with a moved folder, else None."""
        try:
            return self._dirs[rel_dir]
        except KeyError:
            pass
        found = self.moved.get(rel_dir)
        if found is None and self.moved:
            parent, _, name = rel_dir.rpartition("/")
            above = self.stored_dir(parent)
            found = None if above is None else f"{above}/{name}"
        self._dirs[rel_dir] = found
        return found


_FolderMove = Literal["moved", "taken", "gone", "unsupported"]


def _move_folder(staging_fd: int, staged: str, dir_fd: int, base: str) -> tuple[_FolderMove, str]:
    """Move staged folder `staged` to the first free name of `base` in `dir_fd`, never onto
    anything. ("moved", name); ("taken", name): a folder stands at `name`, publish into it file
    by file; ("gone", ""): not in staging any more (moved by a run that crashed);
    ("unsupported", ""): the file system refuses RENAME_NOREPLACE (a folder moved without it
    would have to reserve its name with an empty folder first, which `TreeDirs.open` of
    another processor could be filling at that moment: files then go one by one)."""
    if not fscaps.native(dir_fd, "rename_noreplace"):
        return "unsupported", ""
    for _, name in candidate_names(base):
        try:
            fsops.renameat2(staging_fd, staged, dir_fd, name, noreplace=True)
            return "moved", name
        except FileNotFoundError:
            # The source is looked up before the target: the staged folder is gone (asked
            # again to be sure) — moved whole by an earlier run.
            if exists(staging_fd, staged):
                raise
            return "gone", ""
        except OSError as exc:
            if fscaps.refusal(exc):
                fscaps.refused(dir_fd, "rename_noreplace", "renameat2 refused a folder")
                return "unsupported", ""
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                _raise_space(exc)
                raise
        # Something is there. TreeDirs.open's rule: a folder is used as it is (here: filled
        # file by file, never renamed onto), anything else is passed over for the next name.
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return "taken", name  # gone again at once: leave it to TreeDirs.open, file by file
        if stat.S_ISDIR(st.st_mode):
            return "taken", name
    raise AssertionError("unreachable")  # pragma: no cover


def move_new_folders(
    tree: TreeDirs,
    staging_fd: int,
    ledger: Ledger,
    upload: str,
    *,
    files: Iterable[StagedFile],
    dirs: Sequence[str],
    into: MovedFolders,
    after_move: Callable[[], None] = lambda: None,
) -> None:
    """Move each outermost folder of the entry that can arrive whole with one rename.

    A folder qualifies when it is still staged, none of the files under it is already recorded
    for this upload (a replay) or a duplicate (which must never be written), and the free name
    for it in its parent's place is not a folder already. `dirs` lists parents before their
    children (the walk's order). What moved is added to `into` as it moves (so that a caller
    who meets OutOfSpace here knows what did); `after_move` is called after each move (the
    fault hook).
    """
    # Folders with a file under them (at any depth) that must go file by file.
    held: set[str] = set()
    for item in files:
        if (
            ledger.recorded(upload, item.path) is None
            and ledger.stored_version(item.path, item.sha256) is None
        ):
            continue
        rel_dir = item.path.rpartition("/")[0]
        while rel_dir and rel_dir not in held:
            held.add(rel_dir)
            rel_dir = rel_dir.rpartition("/")[0]
    settled: set[str] = set()  # moved now, or by an earlier run: nothing under them to try
    for rel in dirs:
        parent, _, base = rel.rpartition("/")
        if parent in settled:
            settled.add(rel)
            continue
        if rel in held:
            continue
        parent_fd, parent_stored = tree.open(parent)
        outcome, name = _move_folder(staging_fd, rel, parent_fd, base)
        if outcome == "unsupported":
            break  # the file system cannot: every file goes by itself, with link()
        if outcome == "taken":
            continue  # its files go one by one into the folder already there
        settled.add(rel)
        if outcome == "moved":
            stored = f"{parent_stored}/{name}" if parent_stored else name
            into.add(rel, stored)
            log.debug("moved folder %s whole as %s", rel, stored)
            after_move()


def publish_file(
    tree: TreeDirs,
    staging_fd: int,
    ledger: Ledger,
    up: Upload,
    item: StagedFile,
    *,
    moved: MovedFolders | None = None,
) -> Record:
    """Publish one staged file (idempotent) and queue its ledger record."""
    if moved is not None and moved.moved:
        record = _moved_record(up, item, moved)
        if record is not None:
            ledger.append(record)
            return record
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


def _moved_record(up: Upload, item: StagedFile, moved: MovedFolders) -> Record | None:
    """The record of a file that arrived with a folder moved whole this run, if it did.

    That folder had no file recorded or duplicate under it, and every file in it kept its
    plain name below the folder's stored path.
    """
    rel_dir, _, base = item.path.rpartition("/")
    stored_dir = moved.stored_dir(rel_dir)
    return None if stored_dir is None else _record(up, item, f"{stored_dir}/{base}", "stored")


def record_moved(
    ledger: Ledger, up: Upload, files: Iterable[StagedFile], moved: MovedFolders
) -> None:
    """Queue the records of every file that arrived with a folder moved whole (only those)."""
    for item in files:
        record = _moved_record(up, item, moved)
        if record is not None:
            ledger.append(record)


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


def make_dirs(tree: TreeDirs, dirs: Sequence[str], moved: MovedFolders | None = None) -> None:
    """Mirror the entry's folders (empty ones included) into the tree, but for those that
    came with a folder moved whole."""
    for rel in dirs:
        if moved is None or moved.stored_dir(rel) is None:
            tree.open(rel)


__all__ = [
    "MovedFolders",
    "TreeDirs",
    "Upload",
    "exists",
    "make_dirs",
    "move_new_folders",
    "publish_file",
    "record_moved",
    "version_name",
]
