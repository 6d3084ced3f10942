"""Scan: turn the collector's FOLDER (or some of its THING subfolders) into a plan.

The plan is the sorted list of regular files (relative POSIX path, size, mtime_ns) and folders
that could be sent. Every name is checked here, on the collector's PC, with the same policy the
server enforces (`dittohead.core.names`), and *all* bad names are reported together: a
collector should be able to fix their folder in one go, not discover one bad name per attempt.
Nothing here reads file contents or touches the network.

A send first walks the folder in a *quick pass* against the client's state (`Watch`): when the
server has confirmed every file as it is, that is all (nothing to send, no need to gather the
names for the collision check); at the first file it has not, the send may start connecting,
and the folder is scanned again properly, every name checked.

Symbolic links and special files (FIFOs, sockets, devices, Windows junctions) are skipped with a
warning: the protocol only carries folders and regular files, and following a link could send
something from outside FOLDER (or loop forever).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from dittohead.core.errors import LocalFileError, NameRejected, describe_os_error
from dittohead.core.names import NameSet, check_path, parents

log = logging.getLogger(__name__)

#: How many bad names the one-line error spells out before it says "and N more".
SHOWN_PROBLEMS = 20

_IS_WINDOWS = os.name == "nt"


@dataclass(frozen=True, slots=True)
class FileItem:
    """One regular file as it was when scanned."""

    path: str  # relative POSIX path, checked by the name policy
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Plan:
    """What a folder holds: files and folders, sorted so that parents come first."""

    root: str  # absolute path of FOLDER
    files: tuple[FileItem, ...]
    dirs: tuple[str, ...]  # every folder in the scanned part (THING folders included)
    #: folders with no file anywhere below them in the scanned part; they are sent along so
    #: that an (intentionally) empty folder exists on the server too
    empty_dirs: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def with_files(self, files: Iterable[FileItem]) -> Plan:
        """The same folder with only `files` (for example those not yet confirmed)."""
        return Plan(self.root, tuple(files), self.dirs, self.empty_dirs)

    def with_root(self, root: str) -> Plan:
        """The same files and folders, to be read from `root` instead."""
        return Plan(root, self.files, self.dirs, self.empty_dirs)


class NamesRejected(NameRejected):
    """Some file or folder names cannot be sent; nothing was sent."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        #: every (name, reason) found, for a GUI or ``-v`` to list in full
        self.problems: tuple[tuple[str, str], ...] = tuple(problems)
        count = len(self.problems)
        noun = "name cannot" if count == 1 else "names cannot"
        shown = "; ".join(f"{name!r} ({why})" for name, why in self.problems[:SHOWN_PROBLEMS])
        more = count - SHOWN_PROBLEMS
        tail = f"; and {more} more" if more > 0 else ""
        super().__init__(
            f"{count} {noun} be sent (nothing was sent): {shown}{tail}; "
            "rename them (or move them out of the folder) and send again"
        )


def path_key(path: str) -> tuple[str, ...]:
    """Sort key that puts a folder before everything inside it (``a`` < ``a/b`` < ``a.txt``)."""
    return tuple(path.split("/"))


def _reason(exc: NameRejected, name: str) -> str:
    # The policy's messages read "'<name>' is not an allowed name: <why>"; the one-line summary
    # names each path once, so keep only the why (or the whole message if the wording changes).
    prefix = f"{name!r} is not an allowed name: "
    return exc.message[len(prefix) :] if exc.message.startswith(prefix) else exc.message


def _is_junction(entry: os.DirEntry[str]) -> bool:
    """A Windows junction or mount point looks like a folder but leads elsewhere."""
    if not _IS_WINDOWS:
        return False
    attributes: int = getattr(entry.stat(follow_symlinks=False), "st_file_attributes", 0)
    return bool(attributes & stat.FILE_ATTRIBUTE_REPARSE_POINT)


def _cannot_read(path: str, exc: OSError) -> LocalFileError:
    exc.filename = path
    return LocalFileError(
        f"cannot read the folder {describe_os_error(exc)}; nothing was sent "
        "(check that the folder exists and that you may read it)"
    )


def _by_name(entry: os.DirEntry[str]) -> str:
    return entry.name


class _Unconfirmed(Exception):
    """The quick pass met a file the state does not confirm, or a bad name: scan properly."""

    def __init__(self, *, bad_name: bool = False) -> None:
        super().__init__()
        self.bad_name = bad_name


class _Walker:
    """Collects files, folders and bad names below one root, in `path_key` order.

    Folders are walked depth first with each folder's entries sorted by name, which visits
    paths in exactly the order `path_key` sorts them (a folder, then everything inside it, then
    its next sibling): the lists come out sorted, and the names go into `names` in that order,
    without sorting tens of thousands of paths afterwards.

    With `confirmed` (the state's size and mtime per path) it is the *quick pass* of a send:
    it raises `_Unconfirmed` at the first file the state does not confirm, or the first bad
    name, and keeps its warnings in `warnings` instead of logging them (a proper scan follows
    and says them). It checks each name alone but does not collect them in a `NameSet`: every
    file it lets through was confirmed by the server, so its name passed when it was sent.
    """

    def __init__(self, confirmed: Mapping[str, tuple[int, int]] | None = None) -> None:
        self.confirmed = confirmed
        self.warnings: list[str] = []
        self.files: list[FileItem] = []
        self.dirs: list[str] = []
        self.problems: list[tuple[str, str]] = []
        # Every name together: duplicates that differ only in case or Unicode normalization
        # (one file on Windows), and files that are also folders. NameSet refuses the later
        # spelling; keep going so that every clash is reported in the same message.
        self.names = NameSet()

    def _name_ok(self, rel: str) -> bool:
        try:
            check_path(rel)
        except NameRejected as exc:
            if self.confirmed is not None:
                raise _Unconfirmed(bad_name=True) from None
            self.problems.append((rel, _reason(exc, rel)))
            return False
        return True

    def _warn(self, message: str) -> None:
        if self.confirmed is not None:
            self.warnings.append(message)
        else:
            log.warning("%s", message)

    def _add_dir_name(self, rel: str) -> None:
        if self.confirmed is not None:
            return
        try:
            self.names.add_dir(rel)
        except NameRejected as exc:
            self.problems.append((rel, _reason(exc, rel)))

    def add_thing(self, name: str) -> None:
        """A THING folder (already checked by `_check_thing`) that is about to be walked."""
        self.dirs.append(name)
        self._add_dir_name(name)

    @staticmethod
    def _list(abs_dir: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(abs_dir) as it:
                entries = list(it)
        except OSError as exc:
            raise _cannot_read(abs_dir, exc) from exc
        entries.sort(key=_by_name)
        return entries

    def walk(self, top: str, top_rel: str) -> None:
        """Walk `top` (whose relative name is `top_rel`, "" for FOLDER itself)."""
        # An explicit stack of half-read folders instead of recursion: deep trees cannot hit
        # the recursion limit, and os.scandir gives the entry type without a stat call on
        # POSIX (one lstat per file).
        files, problems, add_file = self.files, self.problems, self.names.add_file
        confirmed = self.confirmed.get if self.confirmed is not None else None
        stack = [(iter(self._list(top)), f"{top_rel}/" if top_rel else "")]
        while stack:
            entries, prefix = stack[-1]
            for entry in entries:
                rel = prefix + entry.name
                try:
                    # Regular files (not links: follow_symlinks=False) are handled right here:
                    # this runs once per file, tens of thousands of times.
                    if entry.is_file(follow_symlinks=False):
                        try:
                            check_path(rel)
                        except NameRejected as exc:
                            if confirmed is not None:
                                raise _Unconfirmed(bad_name=True) from None
                            problems.append((rel, _reason(exc, rel)))
                            continue
                        st = entry.stat(follow_symlinks=False)
                        files.append(FileItem(rel, st.st_size, st.st_mtime_ns))
                        if confirmed is not None:
                            if confirmed(rel) != (st.st_size, st.st_mtime_ns):
                                raise _Unconfirmed()
                            continue
                        try:
                            add_file(rel)
                        except NameRejected as exc:
                            problems.append((rel, _reason(exc, rel)))
                        continue
                    inside = self._visit(entry, rel)
                except FileNotFoundError:
                    # Deleted between listing and stat: it is simply not part of this send.
                    self._warn(f"{rel} disappeared while the folder was scanned; skipped")
                    continue
                except OSError as exc:
                    raise _cannot_read(entry.path, exc) from exc
                if inside is not None:
                    stack.append((iter(inside), f"{rel}/"))
                    break  # walk the folder now; the rest of this one comes after it
            else:
                stack.pop()

    def _visit(self, entry: os.DirEntry[str], rel: str) -> list[os.DirEntry[str]] | None:
        """Record `entry` (anything but a regular file); return a folder's entries to walk."""
        if entry.is_symlink():
            self._warn(f"skipped {rel}: it is a symbolic link (only real files are sent)")
        elif entry.is_dir(follow_symlinks=False):
            if _is_junction(entry):
                self._warn(f"skipped {rel}: it is a junction (only real folders are sent)")
            elif self._name_ok(rel):
                # A folder with a bad name is reported once; its contents would only repeat
                # the same complaint, and they get checked again once it is renamed.
                self.dirs.append(rel)
                self._add_dir_name(rel)
                return self._list(entry.path)
        else:
            self._warn(f"skipped {rel}: it is not a regular file or folder")
        return None


def _check_thing(root: str, thing: str) -> str:
    # Tab completion leaves a trailing separator ("eprime/" or "eprime\" on Windows).
    name = thing.rstrip("/" + os.sep)
    if "/" in name or os.sep in name or name in ("", ".", ".."):
        raise LocalFileError(
            f"{thing!r} is not the name of a folder directly inside {root}; "
            "give the names of subfolders (such as eprime), nothing was sent"
        )
    try:
        check_path(name)
    except NameRejected as exc:
        raise NamesRejected([(name, _reason(exc, name))]) from None
    path = os.path.join(root, name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise LocalFileError(f"there is no folder {name!r} in {root}; nothing was sent") from None
    except OSError as exc:
        raise _cannot_read(path, exc) from exc
    if not stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
        raise LocalFileError(f"{name!r} in {root} is not a folder; nothing was sent")
    return name


class Watch:
    """Calls `on_new` once, as soon as the scan knows there is something to send.

    `confirmed` maps paths to (size, mtime_ns), as the client's state does. `scan` first walks
    the folder comparing each file with it (the quick pass); at the first file it does not
    confirm, `on_new` is called (the send can start connecting meanwhile: see
    `openssh.EarlyStart`) and a proper scan follows. `fired` stays False when every file was
    confirmed: nothing is new.
    """

    def __init__(self, confirmed: Mapping[str, tuple[int, int]], on_new: Callable[[], None]):
        self.confirmed = confirmed
        self.on_new = on_new
        self.fired = False

    def fire(self) -> None:
        if not self.fired:
            self.fired = True
            self.on_new()


def scan(
    folder: str | os.PathLike[str], things: Sequence[str] = (), *, watch: Watch | None = None
) -> Plan:
    """Scan `folder` (or only its `things` subfolders) into a sorted, name-checked `Plan`.

    Raises `NamesRejected` listing every bad name (including names that would collide on
    Windows) and `LocalFileError` when the folder or a THING cannot be read. With `watch`, a
    folder whose every file the state confirms is scanned in one quick pass (see `Watch`).
    """
    root = os.path.abspath(os.fspath(folder))
    try:
        st = os.stat(root)
    except OSError as exc:
        raise _cannot_read(root, exc) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise LocalFileError(f"{root} is not a folder; nothing was sent")
    names = sorted({_check_thing(root, t) for t in things})

    if watch is not None:
        quick = _Walker(watch.confirmed)
        try:
            _walk(quick, root, names)
        except _Unconfirmed as stop:
            # Something to send: the connection may start while the folder is scanned again,
            # properly. (Not for a bad name: the proper scan words it, and nothing is sent.)
            if not stop.bad_name:
                watch.fire()
        else:
            for message in quick.warnings:
                log.warning("%s", message)
            return _plan(root, quick)

    walker = _Walker()
    _walk(walker, root, names)
    if walker.problems:
        raise NamesRejected(sorted(walker.problems, key=lambda p: path_key(p[0])))
    return _plan(root, walker)


def _walk(walker: _Walker, root: str, things: Sequence[str]) -> None:
    if things:
        for name in things:
            walker.add_thing(name)
            walker.walk(os.path.join(root, name), name)
    else:
        walker.walk(root, "")


def _plan(root: str, walker: _Walker) -> Plan:
    files, dirs = walker.files, walker.dirs
    # Folders that hold a file somewhere below them: the files' own folders and their parents
    # (worked out over the distinct folders, not once per file).
    direct = {f.path.rpartition("/")[0] for f in files}
    holding = set(direct)
    for d in direct:
        holding.update(parents(d))
    empty = tuple(d for d in dirs if d not in holding)
    return Plan(root, tuple(files), tuple(dirs), empty)
