"""The stage: stream standard input into ``<inbox>/.<entry>/``, checking everything on the way.

The collector may not list or read the inbox (mode 3773), so everything here works relative to
the inbox fd the gate opened, and below it relative to directory fds this process created
itself, one component at a time, never following a symlink. The name policy from
`dittohead.core.names` is applied to every final name (after `tarread` applied the pax and GNU
extensions); the caps from the config are applied from the headers, before a byte of data is
read; the trailing manifest is checked against what was actually written, because a truncated
stream can look like a shorter valid archive.

Modes are fixed here, not taken from the archive: folders 2770 and files 0640, so that the
processor (group ``dittohead`` via the inbox's setgid bit) can read them and nobody else can.

The receiver is not the security boundary (the processor re-checks everything): the point of
these checks is that an honest collector hears about a problem at once, in words, with nothing
half-stored, and that a hostile stream cannot make *this* process write outside its entry.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import stat
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from dittohead.core.errors import LimitExceeded, NameRejected, OutOfSpace, UploadRejected
from dittohead.core.manifest import (
    MANIFEST_DIR,
    MANIFEST_PATH,
    checked_entries,
    in_blocks,
    json_pieces,
    load_manifest,
    parse_manifest,
)
from dittohead.core.names import (
    MAX_PATH_BYTES,
    PLAIN_COMPONENT,
    PLAIN_USER_PATH,
    RESERVED_TOP,
    NameSet,
    check_path,
    fold,
)
from dittohead.receiver import fsops
from dittohead.receiver.config.checked import UploadLimits
from dittohead.receiver.dropbox import entry_name, staging_name
from dittohead.receiver.upload.tarread import BUFFER_BYTES, Member, Stream, TarReader

log = logging.getLogger(__name__)

FILE_MODE = 0o640
DIR_MODE = 0o2770
#: directory fds kept open while extracting; more than the deepest allowed path (32), so a
#: path's own ancestors are never evicted while it is being created
DIR_FD_CACHE = 64
#: re-check the file system's free space after this many bytes written
SPACE_CHECK_BYTES = 64 * 1024 * 1024
#: hand a large file's data to the disk's writeback in steps of this size while it arrives
WRITEBACK_BYTES = 8 * 1024 * 1024
#: files smaller than this are left to the commit's syncfs (a call per small file costs more
#: than it saves)
WRITEBACK_TAIL_BYTES = 1024 * 1024
#: ... but after this many bytes or files of them, a background syncfs of the entry's file
#: system starts (`fsops.SyncAhead`), so that the commit's syncfs finds little left: over the
#: real sshd, 20,000 files of 1-16 KiB, median 1.58 -> 1.43 s to the receipt (11 sends each)
SYNC_AHEAD_BYTES = 16 * 1024 * 1024
SYNC_AHEAD_FILES = 2000
#: the pipe from sshd is grown to this (Linux's default limit for unprivileged users), so that
#: sshd can run ahead while the receiver is busy with a file and each read takes more: over the
#: real sshd, 10 sends each alternating, L median 2.64 -> 2.42 s, S 1.43 -> 1.25 s
PIPE_BYTES = 1024 * 1024
#: the expected manifest is compared with the one arriving in blocks of about this size
MANIFEST_BLOCK_BYTES = 64 * 1024
_RESERVED_KEY = fold(RESERVED_TOP)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def manifest_cap(max_files: int) -> int:
    """The largest manifest accepted: room for `max_files` entries of maximal length."""
    return min(4096 + max_files * (MAX_PATH_BYTES + 160), 256 * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class Staged:
    """What a completed, verified staging entry holds."""

    entry: str
    files: int
    bytes: int
    manifest_sha256: str


def out_of_space() -> OutOfSpace:
    return OutOfSpace("the server is out of space; nothing was stored. Tell the server's admin")


def _rejected(why: str) -> UploadRejected:
    return UploadRejected(f"{why}; nothing was stored. Send again with the dittohead client")


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    # The collector's umask must neither loosen nor tighten the fixed modes (the processor
    # reads through the group bits); restored afterwards for in-process callers such as tests.
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


class _Dirs:
    """Directory fds beneath the entry, created on demand, with a bounded LRU of open fds."""

    def __init__(self, root_fd: int) -> None:
        self._root = root_fd
        self._fds: OrderedDict[str, int] = OrderedDict()
        # The folder asked for last, which is the most recently used one already: files come
        # folder by folder, and most ask for the same folder as the file before them.
        self._last, self._last_fd = "", root_fd

    def open(self, path: str) -> int:
        """The fd of folder `path` (relative, already checked), creating it as needed."""
        if path == self._last:
            return self._last_fd
        if not path:
            return self._root
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            self._last, self._last_fd = path, fd
            return fd
        parent, _, base = path.rpartition("/")
        parent_fd = self.open(parent)
        # The folder may exist already: created as the parent of an earlier file. Nobody but
        # this process (and the processor's group) can write in the entry, and O_NOFOLLOW |
        # O_DIRECTORY refuses whatever else could stand there.
        with suppress(FileExistsError):
            os.mkdir(base, DIR_MODE, dir_fd=parent_fd)
        fd = os.open(base, fsops.DIR_FLAGS, dir_fd=parent_fd)
        self._fds[path] = fd
        if len(self._fds) > DIR_FD_CACHE:
            # The least recently used: never `path` itself, which is the most recent one.
            os.close(self._fds.popitem(last=False)[1])
        self._last, self._last_fd = path, fd
        return fd

    def close(self) -> None:
        self._last, self._last_fd = "", self._root
        while self._fds:
            os.close(self._fds.popitem()[1])


class Staging:
    """One staging entry ``.<entry>`` in the inbox: created, filled, then committed or removed."""

    def __init__(
        self, inbox_fd: int, source: str, limits: UploadLimits, *, compressed: bool = False
    ) -> None:
        self.inbox_fd = inbox_fd
        #: the upload asked for compressed members (the command's `` zstd`` flag)
        self.compressed = compressed
        self.entry = entry_name(source)
        self.dot_entry = staging_name(self.entry)
        self.limits = limits
        self.fd: int | None = None  # the entry's directory fd, once created
        self.committed = False
        self._created = False
        self._dirs: _Dirs | None = None
        self._since_space_check = 0
        self._writeback_works = True
        self._ahead: fsops.SyncAhead | None = None
        self._small_bytes = self._small_files = 0  # small files since the last SyncAhead
        # Parents of names PLAIN_USER_PATH matched: plain user paths themselves, with fewer than
        # MAX_DEPTH components, so a name below one of them needs only its last component
        # matched (see names.PLAIN_COMPONENT).
        self._plain_parents: set[str] = set()

    def _create(self) -> int:
        os.mkdir(self.dot_entry, DIR_MODE, dir_fd=self.inbox_fd)
        self._created = True
        fd = os.open(self.dot_entry, fsops.DIR_FLAGS, dir_fd=self.inbox_fd)
        self.fd = fd
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or not stat.S_ISDIR(st.st_mode):
            raise UploadRejected("the staging folder was replaced while it was being created")
        # In the setgid inbox the new folder is 2770 and group dittohead already. Only touch
        # the mode if it differs: chmod by a non-member of the folder's group (collectors are
        # never in the dittohead group) would make the kernel clear the setgid bit, and then
        # files would get the collector's group and the processor could not read them.
        if stat.S_IMODE(st.st_mode) != DIR_MODE:
            os.fchmod(fd, DIR_MODE)
            if not os.fstat(fd).st_mode & stat.S_ISGID:
                log.warning("the inbox is not setgid; the staging folder has the collector's group")
        return fd

    def receive(self, fd: int = 0, *, bufsize: int = BUFFER_BYTES) -> Staged:
        """Create the entry and extract the tar stream on `fd` into it; verify the manifest."""
        fsops.grow_pipe(fd, PIPE_BYTES)  # best effort: a file, or a refusal, reads as before
        with _umask(0):
            root = self._create()
            self._dirs = _Dirs(root)
            stream = Stream(fd, stall_timeout=self.limits.stall_timeout, bufsize=bufsize)
            staged = self._extract(TarReader(stream))
            # A writeback error is reported once per open file: the one the background syncfs
            # met would be missing from the commit's own syncfs. It fails the upload here.
            self._finish_ahead()
            return staged

    def _extract(self, reader: TarReader) -> Staged:
        limits = self.limits
        max_files, max_file_bytes = limits.max_files, limits.max_file_bytes
        max_upload_bytes = limits.max_upload_bytes
        names = NameSet()
        written = Written()
        total = folders = files = 0
        manifest: ManifestCheck | None = None
        manifest_sha = ""
        while (member := reader.next_member()) is not None:
            if manifest is not None:
                raise _rejected(f"the manifest {MANIFEST_PATH!r} must be the last member")
            name = self._admit_name(member, names)
            size = member.size
            if member.raw_size >= 0:
                # Compressed: every cap below applies to the bytes the file will have.
                size = self._compressed_size(name, member)
            if member.is_dir:
                folders += 1
                if folders > max_files:
                    raise _limit(f"more than {max_files} folders", "max_files")
                self._folder(name)
                continue
            if name == MANIFEST_PATH:
                if member.size > manifest_cap(limits.max_files):
                    raise _limit(
                        f"a manifest larger than {manifest_cap(limits.max_files)} bytes",
                        "max_files",
                    )
                # Every file came before it: what it must say is known, and it is compared as
                # it arrives instead of being held (~140 bytes per file) and parsed.
                manifest = ManifestCheck(written, total)
                digest = self._write(name, member, reader, sink=manifest.feed)
                manifest_sha = digest.hex()
                continue
            if size > max_file_bytes:
                raise _limit(
                    f"{name!r} has {size} bytes, more than {max_file_bytes} per file",
                    "max_file_bytes",
                )
            total += size
            if total > max_upload_bytes:
                raise _limit(f"more than {max_upload_bytes} bytes", "max_upload_bytes")
            files += 1  # len(written), counted here
            if files > max_files:
                raise _limit(f"more than {max_files} files", "max_files")
            digest = self._write(name, member, reader)
            written.add(name, size, digest)
            if size < WRITEBACK_TAIL_BYTES:
                self._small_written(size)
        if manifest is None:
            raise UploadRejected(
                f"incomplete upload: the archive has no manifest ({MANIFEST_PATH}); nothing "
                "was stored. Send with the dittohead client"
            )
        reader.finish()
        self._verify(manifest, written)
        return Staged(self.entry, len(written), total, manifest_sha)

    def _compressed_size(self, name: str, member: Member) -> int:
        """The decompressed size of compressed `member`, once the member may be one."""
        if not self.compressed:
            raise _rejected(f"{name!r} is compressed, but the upload did not ask for compression")
        if name == MANIFEST_PATH:
            raise _rejected(f"the manifest {MANIFEST_PATH!r} must not be compressed")
        # The client compresses only what gets smaller: more bytes on the wire than in the
        # file would be data the caps on the file never counted.
        if not 0 < member.size <= member.raw_size:
            raise _rejected(
                f"{name!r} has {member.size} compressed bytes for {member.raw_size} bytes of "
                "data; compressed data must be smaller than the file"
            )
        return member.raw_size

    def _admit_name(self, member: Member, names: NameSet) -> str:
        """The member's checked name, recorded in `names` (duplicates, Windows collisions)."""
        try:
            name = self._check_name(member)
            if member.is_dir:
                names.add_dir(name)
            else:
                names.add_file(name)
        except NameRejected as exc:
            raise NameRejected(
                f"{exc.message}; nothing was stored. Rename it and send again"
            ) from None
        return name

    def _check_name(self, member: Member) -> str:
        name = member.name
        if member.is_dir and name.endswith("/"):
            name = name[:-1]  # tar writes folders as "name/"; only that one slash goes
        if len(name) <= MAX_PATH_BYTES:
            # What check_path's fast path accepts, and not under the reserved folder: most
            # names, settled by one match (the rules below would accept it unchanged).
            parent, _, base = name.rpartition("/")
            if parent in self._plain_parents:
                if PLAIN_COMPONENT.fullmatch(base):
                    return name
            elif PLAIN_USER_PATH.fullmatch(name):
                if parent:
                    self._plain_parents.add(parent)
                return name
        name = check_path(name, allow_reserved=True)
        top = name.split("/", 1)[0]
        # fold() of an ASCII name is its lower case (NFC and casefold change nothing else).
        if (top.lower() if top.isascii() else fold(top)) == _RESERVED_KEY:
            # Only the manifest (and its folder) may live under .dittohead/: the processor
            # reads that folder as dittohead's own, so nothing else may be smuggled in there.
            wanted = MANIFEST_DIR if member.is_dir else MANIFEST_PATH
            if name != wanted:
                raise NameRejected(
                    f"{name!r} is not allowed: the folder {RESERVED_TOP!r} may only hold "
                    f"{MANIFEST_PATH!r}"
                )
        return name

    def _folder(self, name: str) -> None:
        assert self._dirs is not None
        self._dirs.open(name)

    def _write(
        self,
        name: str,
        member: Member,
        reader: TarReader,
        *,
        sink: Callable[[memoryview], None] | None = None,
    ) -> bytes:
        """Create `name` (O_EXCL, never following a link) and stream the member's data into it,
        hashing in the same pass (docs/design.md: never a second pass); `sink` sees the data too.
        Returns the sha256."""
        assert self._dirs is not None
        parent, _, base = name.rpartition("/")
        out = os.open(base, _CREATE, FILE_MODE, dir_fd=self._dirs.open(parent))
        try:
            if member.raw_size >= 0:
                return self._inflate_into(out, name, member, reader)
            whole = None if sink else reader.whole(member)
            if whole is not None:
                # The usual small file: data and padding are in the buffer already.
                digest = hashlib.sha256(whole)
                size = len(whole)
                done = os.write(out, whole) if size else 0
                if done != size:  # a short write (rare): the rest as `write_all` writes it
                    fsops.write_all(out, whole[done:])
                if size >= WRITEBACK_TAIL_BYTES:
                    self._writeback(out, 0, size)
                self._since_space_check += size  # _count, inlined
                if self._since_space_check >= SPACE_CHECK_BYTES:
                    self._check_space()
                return digest.digest()
            return self._stream_into(out, reader.data(member), sink)
        finally:
            os.close(out)

    def _stream_into(
        self, out: int, chunks: Iterable[memoryview], sink: Callable[[memoryview], None] | None
    ) -> bytes:
        write = _HashedWrite(self, out)
        for chunk in chunks:
            if sink is not None:
                sink(chunk)
            write(chunk)
        return write.digest()

    def _inflate_into(self, out: int, name: str, member: Member, reader: TarReader) -> bytes:
        """`_stream_into` for a compressed member: the decompressed bytes are hashed, written
        and counted; `unzstd` bounds them by the size already checked against the caps."""
        from dittohead.receiver.upload import unzstd  # zstandard: only for compressed uploads

        write = _HashedWrite(self, out)
        unzstd.inflate(reader.data(member), member.raw_size, name, write)
        return write.digest()

    def _count(self, written: int) -> None:
        self._since_space_check += written
        if self._since_space_check >= SPACE_CHECK_BYTES:
            self._check_space()

    def _writeback(self, fd: int, offset: int, count: int) -> None:
        # Start writing this range to disk now, while the rest of the upload still arrives,
        # instead of leaving the whole upload dirty for the commit's syncfs (with much free
        # memory the kernel's own writeback does not start before that). Waiting for the range
        # one step back bounds what is dirty or in flight per file; the syncfs stays.
        if not self._writeback_works:
            return
        if offset >= WRITEBACK_BYTES:
            fsops.start_writeback(fd, offset - WRITEBACK_BYTES, WRITEBACK_BYTES, wait=True)
        self._writeback_works = fsops.start_writeback(fd, offset, count)

    def _small_written(self, size: int) -> None:
        self._small_bytes += size
        self._small_files += 1
        if self._small_bytes >= SYNC_AHEAD_BYTES or self._small_files >= SYNC_AHEAD_FILES:
            self._small_bytes = self._small_files = 0
            if self._ahead is None:
                assert self.fd is not None
                self._ahead = fsops.SyncAhead(self.fd)
            self._ahead.start()

    def _finish_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead.finish()

    def _check_space(self) -> None:
        # Refuse an upload that would eat the reserve before the disk is full, so that the
        # processor (and everyone else on that file system) still has room to work.
        self._since_space_check = 0
        if fsops.free_bytes(self.inbox_fd) < self.limits.min_free_bytes:
            raise out_of_space()

    def _verify(self, manifest: ManifestCheck, written: Written) -> None:
        manifest_bytes = manifest.unless_exact()
        if manifest_bytes is None:
            return
        by_path = written.by_path()
        if not manifest_lists_exactly(manifest_bytes, by_path):
            verify_manifest(manifest_bytes, by_path, max_files=self.limits.max_files)

    def close(self) -> None:
        """Close the entry's fds (the entry itself stays)."""
        # The background syncfs uses the entry's fd: it ends before the fd is closed. Its error
        # matters only to an upload still on its way to the commit (see `receive`).
        with suppress(OSError):
            self._finish_ahead()
        if self._dirs is not None:
            self._dirs.close()
            self._dirs = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        """Remove the staging entry completely, unless it was committed."""
        self.close()
        if self.committed or not self._created:
            return
        # fd-based and never follows a symlink: whatever the entry holds, only it goes.
        with suppress(FileNotFoundError):
            shutil.rmtree(self.dot_entry, dir_fd=self.inbox_fd)


class _HashedWrite:
    """One file's data as it arrives (`Staging._stream_into`, `_inflate_into`): hashed, written
    to `out`, handed to writeback as it grows, and counted against the free-space check."""

    __slots__ = ("_hash", "done", "flushed", "out", "staging")

    def __init__(self, staging: Staging, out: int) -> None:
        self.staging, self.out = staging, out
        self._hash = hashlib.sha256()
        self.done = self.flushed = 0  # bytes written, and handed to writeback early

    def __call__(self, chunk: memoryview) -> None:
        self._hash.update(chunk)
        fsops.write_all(self.out, chunk)
        self.done += len(chunk)
        if self.done - self.flushed >= WRITEBACK_BYTES:
            self.staging._writeback(self.out, self.flushed, self.done - self.flushed)
            self.flushed = self.done
        self.staging._count(len(chunk))

    def digest(self) -> bytes:
        """The sha256 of all the data, once the tail is handed to writeback."""
        if self.done >= WRITEBACK_TAIL_BYTES and self.done > self.flushed:
            self.staging._writeback(self.out, self.flushed, self.done - self.flushed)
        return self._hash.digest()


class Written:
    """The files written so far, in stream order, with their sizes and sha256 digests.

    Held for the whole upload, once per file: the paths (the strings the `NameSet` holds too),
    the sizes in an array and the digests as 32 raw bytes each in one buffer, about 50 bytes a
    file instead of the ~250 of a dict of (size, hex digest) tuples.
    """

    __slots__ = ("digests", "paths", "sizes")

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.sizes = array("q")
        self.digests = bytearray()

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, path: str, size: int, sha256: bytes) -> None:
        self.paths.append(path)
        self.sizes.append(size)
        self.digests += sha256

    def by_path(self) -> dict[str, tuple[int, str]]:
        """Path -> (size, sha256 in hex), as `manifest_lists_exactly` and `verify_manifest` take."""
        digests = self.digests
        return {
            path: (size, digests[32 * i : 32 * i + 32].hex())
            for i, (path, size) in enumerate(zip(self.paths, self.sizes, strict=True))
        }

    def manifest_pieces(self, total: int) -> Iterator[bytes]:
        """The manifest the dittohead client writes for these files (`total` bytes), in pieces
        (`core.manifest.json_pieces`: every file in stream order)."""
        return json_pieces(zip(self.paths, self.sizes, strict=True), self.digests, len(self), total)


class ManifestCheck:
    """The manifest member, compared as it arrives with what the client writes for `written`.

    A manifest that is byte for byte what the dittohead client writes for the files written
    lists exactly their paths, sizes and digests, each once, with true totals:
    `manifest_lists_exactly` would say so too. That one is never held in memory, nor parsed
    into an object per entry. At the first byte that differs (another writer's spacing or key
    order, or a real mismatch) the manifest is kept from then on, after the part that matched
    (rebuilt), and `unless_exact` gives it whole to be judged as before, in the same words.
    """

    def __init__(self, written: Written, total: int) -> None:
        self._written, self._total = written, total
        self._expected = in_blocks(written.manifest_pieces(total), MANIFEST_BLOCK_BYTES)
        self._piece = b""
        self._at = 0  # bytes of `_piece` matched
        self._matched = 0  # bytes of the manifest matched
        self._rest: io.BytesIO | None = None  # the whole manifest so far, after a difference

    def feed(self, chunk: memoryview) -> None:
        if self._rest is not None:
            self._rest.write(chunk)
            return
        view = chunk
        while view:
            if self._at == len(self._piece):
                piece = next(self._expected, None)
                if piece is None:  # longer than expected
                    self._differs(view)
                    return
                self._piece, self._at = piece, 0
            n = min(len(view), len(self._piece) - self._at)
            if view[:n] != self._piece[self._at : self._at + n]:
                self._differs(view)
                return
            self._at += n
            self._matched += n
            view = view[n:]

    def _differs(self, rest: memoryview) -> None:
        kept = self._rest = io.BytesIO()
        for piece in self._written.manifest_pieces(self._total):
            if kept.tell() + len(piece) >= self._matched:
                kept.write(piece[: self._matched - kept.tell()])
                break
            kept.write(piece)
        kept.write(rest)

    def unless_exact(self) -> bytes | None:
        """None if the manifest was exactly the expected one; otherwise its bytes."""
        if self._rest is None:
            if self._at == len(self._piece) and next(self._expected, None) is None:
                return None
            self._differs(memoryview(b""))  # shorter than expected
        assert self._rest is not None
        return self._rest.getvalue()


def manifest_lists_exactly(data: bytes, written: dict[str, tuple[int, str]]) -> bool:
    """Whether the manifest lists exactly the files `written`, with their sizes and sha256.

    The common case, checked without running the name policy a second time: every path in
    `written` already passed it (and the upload's `NameSet`) as a tar member, so a manifest
    of the right shape whose paths are exactly those names, each once, is one `parse_manifest`
    would accept and `verify_manifest` would pass. A digest equal to ``hexdigest()`` is 64
    lower-case hex digits by construction (so its form is not checked again). Anything else
    returns False, and `verify_manifest` then judges the manifest exactly as before (so a path
    that did not arrive, a bad name or a wrong total is reported in the same words).
    """
    left = written.copy()  # each listed path is taken out once: a path listed twice is not
    try:
        doc = load_manifest(data, _NotExact)
        for path, size, digest in checked_entries(doc, _NotExact, check_sha256=False):
            got = left.pop(path, None)
            if got is None or got[0] != size or got[1] != digest:
                return False
    except _NotExact:
        return False
    return not left


class _NotExact(Exception):
    """What `checked_entries` raises for `manifest_lists_exactly`: the words come later."""


def verify_manifest(data: bytes, written: dict[str, tuple[int, str]], *, max_files: int) -> None:
    """Check the manifest in full (every listed name through the policy again) against the
    files `written`; raise the first mismatch, in words for the collector."""
    manifest = parse_manifest(data, max_files=max_files)
    listed = manifest.by_path()
    for path, (size, digest) in written.items():
        entry = listed.get(path)
        if entry is None:
            raise _rejected(f"manifest does not match: {path!r} arrived but is not listed")
        if entry.size != size:
            raise _rejected(
                f"manifest does not match: {path!r} arrived with {size} bytes, the "
                f"manifest lists {entry.size}"
            )
        if entry.sha256 != digest:
            raise _rejected(
                f"manifest does not match: {path!r} arrived with different content "
                "(sha256) than the manifest lists"
            )
    missing = sorted(set(listed) - set(written))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UploadRejected(
            f"incomplete upload: {missing[0]!r}{more} listed in the manifest did not "
            "arrive; nothing was stored. Send again"
        )


def _limit(what: str, key: str) -> LimitExceeded:
    where = f" (limits.{key} in the server's configuration)"
    return LimitExceeded(
        f"the upload is larger than this server accepts: {what}{where}; nothing was stored. "
        "Send less at a time or ask the server's admin"
    )
