"""Verify: walk a claimed entry without trusting it, and copy every byte into dittohead's hands.

The collector owns the entry and may still hold fds inside it, so every object is looked at
through an fd opened with ``O_NOFOLLOW`` (``O_PATH`` for anything that might be a file, so a
FIFO or device is never really opened) and judged by ``fstat`` alone: directories and regular
files only, one link, owned by the entry's owner, on the inbox's device, no set-id bits, within
the size caps and listed in the manifest with that size. Regular files are then read through
their own ``O_PATH`` fd (re-opened via ``/proc/self/fd``, which reaches exactly that inode) and
copied into a new dittohead-owned file in the study's private staging folder, hashed in the same
pass; a file whose size, mtime or ctime moved during the copy is refused.

The staging folder mirrors the entry: the copy of ``a/b/x.txt`` is created at ``a/b/x.txt`` in
it, each folder made as the walk reaches it (empty ones too), so that `publish` can move a
folder that is new to the tree with one rename. Names are safe to create by then: each was
checked (``check_path``, and one `NameSet` for twins) before anything is made for it.

Nothing is published here: the whole entry must pass before `publish` touches the tree.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from dittohead.core.errors import DittoheadError
from dittohead.core.manifest import (
    MANIFEST_DIR,
    MANIFEST_PATH,
    Listed,
    checked_entries,
    load_manifest,
)
from dittohead.core.names import NameSet, check_path
from dittohead.receiver import fsops
from dittohead.receiver.config.model import Limits
from dittohead.receiver.processor.claim import EntryRejected

_BUF = 1 << 20
#: bytes of manifest JSON allowed per listed file, on top of a fixed allowance
_MANIFEST_PER_FILE = 1536
_SETID = stat.S_ISUID | stat.S_ISGID
#: staged folders, as the tree's (publish.DIR_MODE): the setgid bit is inherited, never asked for
_DIR_MODE = 0o750


# Slots: one of these per file of an entry is held from the walk to the end of publishing.
@dataclass(frozen=True, slots=True)
class StagedFile:
    path: str  # as sent
    size: int
    sha256: str
    staged: str  # path inside the entry's staging folder (flat ``00000001`` in old journals)
    ino: int  # inode of the staged copy: lets a replay find it again after its rename


@dataclass(frozen=True)
class StagedEntry:
    files: tuple[StagedFile, ...]
    dirs: tuple[str, ...]


class _Walker:
    def __init__(
        self,
        owner: int,
        dev: int,
        limits: Limits,
        listing: Listing,
        *,
        after_copy: Callable[[int], None],
    ) -> None:
        self.owner = owner
        self.dev = dev
        self.limits = limits
        self.expected = listing
        self.names = NameSet()
        self.copied = 0
        self.dirs: list[str] = []
        self.buf = bytearray(_BUF)
        self.after_copy = after_copy

    def _judge(self, rel: str, st: os.stat_result, *, is_dir: bool) -> None:
        kind = "folder" if is_dir else "file"
        if st.st_uid != self.owner:
            raise EntryRejected(f"{rel!r}: {kind} is not owned by the uploader (uid {st.st_uid})")
        if st.st_dev != self.dev:
            raise EntryRejected(f"{rel!r}: {kind} is on another file system (a mount?)")
        if st.st_mode & _SETID and not is_dir:
            raise EntryRejected(f"{rel!r}: file has a set-id bit")
        if not is_dir and st.st_nlink != 1:
            raise EntryRejected(f"{rel!r}: file has {st.st_nlink} hard links")

    def walk(self, dir_fd: int, prefix: str, stage_fd: int) -> None:
        """Walk the entry's folder `dir_fd` (`prefix` as sent) into its staged twin `stage_fd`."""
        with os.scandir(dir_fd) as it:
            names = sorted(item.name for item in it)
        for name in names:
            rel = f"{prefix}{name}"
            if rel in (MANIFEST_DIR, MANIFEST_PATH):
                continue  # read separately, before the walk
            try:
                check_path(rel)
            except DittoheadError as exc:
                raise EntryRejected(exc.message) from None
            path_fd = os.open(name, fsops.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                st = os.fstat(path_fd)
                if stat.S_ISDIR(st.st_mode):
                    self._judge(rel, st, is_dir=True)
                    self._add(rel, is_dir=True)
                    self.dirs.append(rel)
                    try:
                        sub = os.open(".", fsops.DIR_FLAGS, dir_fd=path_fd)
                    except PermissionError:
                        raise EntryRejected(_unreadable(rel, "folder")) from None
                    try:
                        again = os.fstat(sub)
                        if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
                            raise EntryRejected(f"{rel!r}: folder changed while being read")
                        # Plain mode: the setgid bit and the study's group come from the
                        # destination through the staging chain (mkdir() asked for S_ISGID
                        # would be refused by the unit's RestrictSUIDSGID=).
                        os.mkdir(name, _DIR_MODE, dir_fd=stage_fd)
                        stage_sub = os.open(name, fsops.DIR_FLAGS, dir_fd=stage_fd)
                        try:
                            self.walk(sub, rel + "/", stage_sub)
                        finally:
                            os.close(stage_sub)
                    finally:
                        os.close(sub)
                elif stat.S_ISREG(st.st_mode):
                    self._judge(rel, st, is_dir=False)
                    self._add(rel, is_dir=False)
                    self._copy(rel, name, path_fd, st, stage_fd)
                else:
                    raise EntryRejected(f"{rel!r}: not a regular file or folder")
            finally:
                os.close(path_fd)

    def _add(self, rel: str, *, is_dir: bool) -> None:
        try:
            (self.names.add_dir if is_dir else self.names.add_file)(rel)
        except DittoheadError as exc:
            raise EntryRejected(exc.message) from None

    def _copy(self, rel: str, name: str, path_fd: int, st: os.stat_result, stage_fd: int) -> None:
        listed = self.expected.get(rel)
        if not isinstance(listed, tuple):  # (a StagedFile cannot be: the walk meets rel once)
            raise EntryRejected(f"{rel!r}: file is not listed in the manifest")
        path, size, sha256 = listed  # the listing's strings, equal to rel and (below) digest
        if st.st_size != size:
            raise EntryRejected(f"{rel!r}: size {st.st_size} differs from the manifest")
        if st.st_size > self.limits.max_file_bytes:
            raise EntryRejected(f"{rel!r}: larger than the per-file limit")
        if self.copied >= self.limits.max_files:
            raise EntryRejected(f"more than {self.limits.max_files} files")
        # Re-open the very inode judged above; /proc/self/fd never resolves a path again.
        try:
            src = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except PermissionError:
            raise EntryRejected(_unreadable(rel, "file")) from None
        dst = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o440,
            dir_fd=stage_fd,
        )
        try:
            digest, copied = _copy_hashing(src, dst, size + 1, self.buf)
            after = os.fstat(src)
            ino = os.fstat(dst).st_ino
        finally:
            os.close(src)
            os.close(dst)
        # "Before" is `st`, the O_PATH fd's fstat taken ahead of the re-open: the window it
        # opens is wider than one taken after the re-open, so nothing slips through that a
        # separate fstat of `src` would have caught (and it saves that call per file).
        if (after.st_dev, after.st_ino) != (st.st_dev, st.st_ino):
            raise EntryRejected(f"{rel!r}: file was replaced while being read")
        changed = (st.st_size, st.st_mtime_ns, st.st_ctime_ns) != (
            after.st_size,
            after.st_mtime_ns,
            after.st_ctime_ns,
        )
        if changed or copied != size:
            raise EntryRejected(f"{rel!r}: file changed while it was being copied")
        if digest != sha256:
            raise EntryRejected(f"{rel!r}: content does not match the manifest's sha256")
        # The listing's strings are kept rather than a second copy; staged at its own path.
        # It takes the listed tuple's place: the manifest's order, and no second index.
        self.expected[rel] = StagedFile(path, size, sha256, path, ino)
        self.copied += 1
        self.after_copy(self.copied)


def _unreadable(rel: str, kind: str) -> str:
    # The uploader owns every object in their entry and may chmod it at any time; what the
    # processor cannot read costs them their entry, never the pass.
    return f"{rel!r}: the processor may not read this {kind} (its mode was changed)"


def _copy_hashing(src: int, dst: int, limit: int, buf: bytearray) -> tuple[str, int]:
    """Copy at most `limit` bytes from `src` to `dst`, hashing them in the same pass."""
    hasher = hashlib.sha256()
    view = memoryview(buf)
    total = 0
    while total < limit:
        ask = min(len(view), limit - total)
        n = os.readv(src, [view[:ask]])
        if n == 0:
            break
        chunk = view[:n]
        hasher.update(chunk)
        while chunk:
            chunk = chunk[os.write(dst, chunk) :]
        total += n
        if n < ask and total == limit - 1:
            # A short read that lands exactly on the expected size is the end of a regular
            # file: no need for the extra read() that would return 0 (one syscall per file).
            # Growth after this read is caught by the caller's after-fstat (size, mtime).
            break
    return hasher.hexdigest(), total


#: the manifest's files by path, in its order (each listed tuple replaced by its staged copy as
#: the walk copies it)
Listing = dict[str, Listed | StagedFile]


def read_manifest(entry_fd: int, owner: int, dev: int, limits: Limits) -> Listing:
    """The entry's manifest, read through the same rules as any other file in it."""
    try:
        dir_fd = os.open(MANIFEST_DIR, fsops.DIR_FLAGS, dir_fd=entry_fd)
    except OSError:
        raise EntryRejected("the entry has no manifest (.dittohead/manifest.json)") from None
    try:
        with os.scandir(dir_fd) as it:
            extra = sorted(i.name for i in it if i.name != "manifest.json")
        if extra:
            raise EntryRejected(f"unexpected {extra[0]!r} in the .dittohead folder")
        try:
            fd = os.open(
                "manifest.json", fsops.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
            )
        except OSError:
            raise EntryRejected("the entry has no manifest (.dittohead/manifest.json)") from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != owner or st.st_nlink != 1:
            raise EntryRejected("the manifest is not a plain file of the uploader's")
        if st.st_dev != dev:
            raise EntryRejected("the manifest is on another file system")
        cap = 65536 + _MANIFEST_PER_FILE * limits.max_files
        if st.st_size > cap:
            raise EntryRejected("the manifest is larger than any honest one")
        src = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        try:
            data = os.read(src, st.st_size + 1)
        finally:
            os.close(src)
    finally:
        os.close(fd)
    text = _decode(data)
    del data  # not kept through the parse: ~8 MiB for a 50,000-file manifest
    return _parse_text(text, limits.max_files)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_manifest("not JSON") from None


def _parse_manifest(data: bytes, max_files: int) -> Listing:
    return _parse_text(_decode(data), max_files)


def _parse_text(text: str, max_files: int) -> Listing:
    """The manifest's shape, checked by `core.manifest.checked_entries` as `parse_manifest` does.

    Its paths are *not* put through the name policy here: `stage_entry` accepts an entry only
    when the manifest lists exactly the files the walk found, and the walk has already checked
    every one of those names (`check_path`, and one `NameSet` for case/Unicode twins and
    file-versus-folder clashes). A listed path that is not one of them — a bad name, a ``./``
    spelling, a twin — is therefore "listed but missing", and the entry is refused all the same.
    This spares a second run of the name policy (check_path and NameSet) for every file.
    """
    # Each file's JSON object becomes a small tuple as it is parsed (and is kept as it is), so
    # the whole manifest never exists as one dict per file.
    doc = load_manifest(text, _bad_manifest, entries_as_tuples=True)
    listing: Listing = {}
    for entry in checked_entries(doc, _bad_manifest, max_files):
        path = entry[0]
        if path in listing:
            raise _bad_manifest(f"{path!r} appears twice")
        listing[path] = entry
    return listing


def _bad_manifest(why: str) -> EntryRejected:
    return EntryRejected(f"the upload's manifest is not valid ({why})")


def stage_entry(
    entry_fd: int,
    owner: int,
    dev: int,
    limits: Limits,
    staging_fd: int,
    *,
    after_copy: Callable[[int], None] = lambda _copied: None,
) -> StagedEntry:
    """Check the whole entry and copy its files into `staging_fd`; raise `EntryRejected`.

    `after_copy(k)` is called once the k-th file is in staging (the processor's fault hook).
    """
    listing = read_manifest(entry_fd, owner, dev, limits)
    walker = _Walker(owner, dev, limits, listing, after_copy=after_copy)
    walker.walk(entry_fd, "", staging_fd)
    dirs = tuple(walker.dirs)
    del walker  # its NameSet, before the files' tuple is built
    # Every file found is listed (checked per file), once (the walk's NameSet), and took its
    # listed tuple's place; now every listed path must have been found, which is also what
    # vouches for the listed names (see `_parse_manifest`).
    files = tuple(listing.values())  # in the manifest's order
    missing = next((f for f in files if not isinstance(f, StagedFile)), None)
    if missing is not None:
        raise EntryRejected(f"{missing[0]!r} is listed in the manifest but missing")
    listing.clear()
    staged = cast(tuple[StagedFile, ...], files)
    if sum(f.size for f in staged) > limits.max_upload_bytes:
        raise EntryRejected("larger than the per-upload limit")
    return StagedEntry(staged, dirs)
