"""Pack: turn a plan into the upload's tar stream, hashing every byte on the way.

The stream is what the protocol (docs/protocol.md) asks for: a POSIX pax tar of
folders and regular files with relative names, whose **last** member is
``.dittohead/manifest.json`` listing every file with its size and sha256, then the two zero
blocks that end an archive. The receiver checks every file it wrote against the manifest, so a
stream cut short can never pass for a complete (shorter) upload.

Speed matters here (docs/design.md, "Performance by design"): headers are the bytes
`tarfile.TarInfo.tobuf` writes with an integer mtime and no user/group names (a float mtime
costs an extra pax header per member, name look-ups cost a system call each), built from a
template for short ASCII names; each file
is read into one reusable 1 MiB buffer and hashed in the same pass (or, if small, read and
hashed ahead while ssh was not yet taking the stream, `Pack.hash_ahead`: then it is not hashed
again unless it changed since); small members
are batched into ~256 KiB chunks so a folder of tiny files does not cost one SSH write per
file. Memory stays constant whatever the file sizes.

An upload that asked for compression (`squeeze`) sends a file that shrinks as one zstd frame
behind a pax record ``DITTOHEAD.zstd=<its size>`` (docs/protocol.md, "Compression"); the
manifest still lists the file's own size and the sha256 of its own bytes.

A file that changes while it is read is refused (LocalFileError): its bytes may already be on
the wire, but without the manifest the server stores nothing, and the collector is told to send
again once the recording has finished.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import tarfile
import time
from collections.abc import Generator, Iterator
from typing import TypeAlias

from dittohead.client import squeeze
from dittohead.client.plan.scan import FileItem, Plan, path_key
from dittohead.core.errors import LocalFileError, describe_os_error
from dittohead.core.manifest import MANIFEST_PATH, Manifest, in_blocks, json_pieces
from dittohead.core.names import parents

BLOCK = 512
READ_SIZE = 1 << 20  # one reusable read buffer per stream
CHUNK_SIZE = 256 << 10  # small members are batched up to about this much per write
#: small files read and hashed ahead of the stream at most (`Pack.hash_ahead`): ~100 bytes each
AHEAD_FILES = 32768
FILE_MODE = 0o644
#: the pax key of a compressed member (docs/protocol.md, "Compression")
ZSTD_KEY = "DITTOHEAD.zstd"
DIR_MODE = 0o755

_ZEROS = bytes(2 * BLOCK)
_SLASH_IS_SEP = os.sep == "/"
_HAVE_READV = hasattr(os, "readv")  # POSIX; a little cheaper than a FileIO per file
# O_BINARY: no newline translation on Windows; O_NOFOLLOW: a file swapped for a link after the
# scan is not followed; O_NONBLOCK: a file swapped for a FIFO cannot hang the open (it makes no
# difference to reading regular files). Each is 0 where the platform lacks it.
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def tar_header_by_tarfile(
    name: str, *, is_dir: bool, size: int = 0, mtime: int = 0, raw_size: int = -1
) -> bytes:
    """`tar_header` as `tarfile` writes it (pax records where ustar cannot hold a value); with
    `raw_size`, the header of a compressed file (`size` compressed bytes)."""
    info = tarfile.TarInfo(name)
    if raw_size >= 0:
        info.pax_headers = {ZSTD_KEY: str(raw_size)}
    if is_dir:
        info.type = tarfile.DIRTYPE  # tobuf adds the trailing "/" to the name
        info.mode = DIR_MODE
    else:
        info.type = tarfile.REGTYPE
        info.mode = FILE_MODE
        info.size = size
    info.mtime = mtime  # an int: a float would add a pax header to every member
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


# The ustar header block, field by field: name[100] mode[8] uid[8] gid[8] size[12] mtime[12]
# chksum[8] typeflag[1] linkname[100] magic/version[8] uname[32] gname[32] devmajor[8]
# devminor[8] prefix[155] pad[12]. For one kind of member only name, size, mtime and the
# checksum vary; the rest is taken once from what tarfile itself writes.
_NAME_FIELD = 100
_OCTAL_LIMIT = 8**11  # an 11-digit octal field (size, mtime); tarfile adds pax records beyond
_CHKSUM_SPACES = 8 * ord(" ")  # the checksum is computed with its own field as spaces


def _fixed_fields(is_dir: bool) -> tuple[bytes, bytes, int]:
    block = tar_header_by_tarfile("x", is_dir=is_dir)
    assert len(block) == BLOCK  # no pax records for this one
    after_chksum = block[156:]
    return block[100:124], after_chksum, sum(after_chksum) + _CHKSUM_SPACES


_FILE_FIELDS = _fixed_fields(False)
_DIR_FIELDS = _fixed_fields(True)


def tar_header(name: str, *, is_dir: bool, size: int = 0, mtime: int = 0) -> bytes:
    """The header block(s) of one member: pax records only where ustar cannot hold a value.

    Exactly the bytes `tarfile` writes (`tar_header_by_tarfile`; tests compare the two), built
    from a template for the common case, a short ASCII name and numbers that fit the ustar
    fields: tarfile's general path costs ~13 µs per member (this ~1 µs), a good part of what
    a folder of small files cost the client.
    """
    if is_dir:
        name += "/"  # as tarfile writes folders
    if not (
        name.isascii() and len(name) <= _NAME_FIELD and 0 <= size < _OCTAL_LIMIT
        and 0 <= mtime < _OCTAL_LIMIT
    ):  # fmt: skip
        return tar_header_by_tarfile(name, is_dir=is_dir, size=size, mtime=mtime)
    mode_uid_gid, after_chksum, after_sum = _DIR_FIELDS if is_dir else _FILE_FIELDS
    encoded = name.encode("ascii")
    head = b"%b%b%b%011o\0%011o\0" % (
        encoded,
        bytes(_NAME_FIELD - len(encoded)),
        mode_uid_gid,
        size,
        mtime,
    )
    return b"%b%06o\0 %b" % (head, sum(head) + after_sum, after_chksum)


#: one tar member: a folder (its path) or a file
Member: TypeAlias = FileItem | str


def members(plan: Plan) -> list[Member]:
    """Folders and files in stream order (`path_key`): each folder before anything inside it.

    Folders sent: every folder that holds a file being sent (and its parents), plus the
    folders that are empty in FOLDER, so the server can recreate them.
    """
    # The files' own folders and the empty ones, then their parents (over distinct folders,
    # not once per file).
    dirs = {f.path.rpartition("/")[0] for f in plan.files}
    dirs.discard("")
    dirs.update(plan.empty_dirs)
    for d in list(dirs):
        dirs.update(parents(d))
    ordered = sorted(dirs, key=path_key)
    # `scan` gives the files in path_key order already: the folders are merged in, without
    # sorting every file again (which held a key tuple and its strings per member at once).
    out: list[Member] = []
    add = out.append
    last: tuple[str, ...] = ()
    i, n = 0, len(ordered)
    next_dir = path_key(ordered[0]) if n else None
    for item in plan.files:
        key = path_key(item.path)
        if key <= last:  # not in order (a plan made otherwise): sort everything
            return _sorted_members(ordered, plan.files)
        while next_dir is not None and next_dir <= key:
            add(ordered[i])
            i += 1
            next_dir = path_key(ordered[i]) if i < n else None
        add(item)
        last = key
    out += ordered[i:]
    return out


def _member_key(member: Member) -> tuple[str, ...]:
    return path_key(member if isinstance(member, str) else member.path)


def _sorted_members(dirs: list[str], files: tuple[FileItem, ...]) -> list[Member]:
    out: list[Member] = [*dirs, *files]
    out.sort(key=_member_key)  # stable: a folder before a file of the same name, as merged
    return out


def _changed(path: str) -> LocalFileError:
    return LocalFileError(
        f"{path} changed while it was being sent; nothing was stored, "
        "send again when the recording has finished"
    )


class Pack:
    """The tar stream of one upload, and the manifest it ends with.

    Iterate over it (or call `chunks`) once to get the stream as byte strings of bounded size;
    after the last chunk `manifest`, `manifest_json` and `manifest_sha256` describe exactly
    what was sent. `bytes_done` counts file bytes read so far (for progress displays).
    """

    def __init__(self, plan: Plan, *, now: int | None = None, compress: bool = False) -> None:
        self.plan = plan
        #: files that shrink may be sent compressed (the request asked for it)
        self.compress = compress
        self._squeeze: squeeze.Squeeze | None = None
        #: bytes the compressed members saved on the wire (for the log and the benchmark)
        self.saved_bytes = 0
        self.members = members(plan)
        self.total_bytes = plan.total_bytes
        self.bytes_done = 0
        self._now = int(time.time()) if now is None else now
        # Each file's sha256 (32 bytes, in stream order): the manifest is written from these and
        # the members at the end, and written again if asked for, instead of being held.
        self._digests = bytearray()
        self._manifest: Manifest | None = None
        self._manifest_sha256 = ""
        self._started = False
        self._base = os.path.join(plan.root, "")  # ends with a separator
        # Read ahead (`hash_ahead`): member index -> (sha256, inode, mtime_ns, ctime_ns).
        self._ahead: dict[int, tuple[bytes, int, int, int]] = {}
        self._ahead_at = 0  # the next member index `hash_ahead` looks at
        self._at = -1  # the member index the stream is at
        self._ahead_buf: memoryview | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks()

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            raise RuntimeError("the manifest is known only once the whole stream was produced")
        return self._manifest

    @property
    def manifest_json(self) -> bytes:
        """The manifest exactly as sent (its sha256 is what the receipt names)."""
        return self.manifest.to_json()

    @property
    def manifest_sha256(self) -> str:
        _ = self.manifest  # known once the stream was produced
        return self._manifest_sha256

    def _manifest_pieces(self) -> Iterator[bytes]:
        files = ((m.path, m.size) for m in self.members if not isinstance(m, str))
        return json_pieces(files, self._digests, len(self.plan.files), self.total_bytes)

    def chunks(self) -> Iterator[bytes]:
        """Produce the stream; each chunk is at most `READ_SIZE` bytes (constant memory)."""
        if self._started:
            raise RuntimeError("a Pack can be streamed only once")
        self._started = True
        out = bytearray()
        buf = memoryview(bytearray(READ_SIZE))
        digests = self._digests
        ahead = self._ahead
        for index, item in enumerate(self.members):
            self._at = index
            if isinstance(item, str):
                out += tar_header(item, is_dir=True, mtime=self._now)
            elif self.compress and squeeze.candidate(item.size):
                digests += yield from self._maybe_compressed(item, self._path(item), out, buf)
            else:
                out += tar_header(
                    item.path, is_dir=False, size=item.size, mtime=item.mtime_ns // 1_000_000_000
                )
                path = self._path(item)
                if item.size < CHUNK_SIZE:
                    # Most files in a folder of many are small: read in one go, no generator.
                    digest = self._small_file(item, path, out, buf, ahead.pop(index, None))
                else:
                    digest = yield from self._file(item, path, out, buf)
                digests += digest
            if len(out) >= CHUNK_SIZE:
                yield bytes(out)
                out.clear()
        # The manifest, last: its size first (for its header), then its bytes, written out
        # piece by piece with the rest of the stream and hashed on the way.
        size = sum(map(len, self._manifest_pieces()))
        out += tar_header(MANIFEST_PATH, is_dir=False, size=size, mtime=self._now)
        sha = hashlib.sha256()
        for block in in_blocks(self._manifest_pieces(), CHUNK_SIZE):
            sha.update(block)
            out += block
            if len(out) >= CHUNK_SIZE:
                yield bytes(out)
                out.clear()
        out += _ZEROS[: -size % BLOCK]
        out += _ZEROS[: 2 * BLOCK]  # end of archive
        self._manifest_sha256 = sha.hexdigest()
        self._manifest = Manifest.of_json(
            lambda: b"".join(self._manifest_pieces()), len(self.plan.files), self.total_bytes
        )
        yield bytes(out)

    def _path(self, item: FileItem) -> str:
        return self._base + (item.path if _SLASH_IS_SEP else item.path.replace("/", os.sep))

    def _small_file(
        self,
        item: FileItem,
        path: str,
        out: bytearray,
        buf: memoryview,
        ahead: tuple[bytes, int, int, int] | None = None,
    ) -> bytes:
        """Append one file smaller than `CHUNK_SIZE` (padded to a block) to `out`; its sha256.

        `out` holds less than `CHUNK_SIZE` plus this file's header before, so it stays well
        below `READ_SIZE` after (at most two chunks' worth). `ahead` is what `hash_ahead`
        found for this file, if it got to it: its sha256 stands for the bytes read now only
        when the file is the same inode with the same mtime and ctime (any write changes the
        ctime, which no program can set back); otherwise the bytes read now are hashed.
        """
        fd = _open_unchanged(item, path)
        try:
            data = _read_whole(fd, buf, item)
            if data is None:
                raise _changed(item.path)  # shorter than when it was scanned
            after = _check_unchanged(fd, item)
        finally:
            os.close(fd)
        self.bytes_done += len(data)
        out += data
        out += _ZEROS[: -item.size % BLOCK]
        if ahead is not None and ahead[1:] == (after.st_ino, after.st_mtime_ns, after.st_ctime_ns):
            return ahead[0]
        return hashlib.sha256(data).digest()

    def hash_ahead(self) -> bool:
        """Read and hash one small file that the stream has not reached yet; False when there
        is none left (or `AHEAD_FILES` are waiting).

        For the time the stream cannot go on: while sshd sets up the session and the receiver
        starts (~0.15 s), and whenever ssh is behind, the client would only wait. The stream
        then sends such a file without hashing it a second time (`_small_file` says when).
        Anything odd here (an error, a file that changed) leaves the file to the stream, which
        reads, hashes and judges it as always.
        """
        members = self.members
        i = max(self._ahead_at, self._at + 1)
        while i < len(members) and len(self._ahead) < AHEAD_FILES:
            item = members[i]
            i += 1
            if isinstance(item, str) or item.size >= CHUNK_SIZE:
                continue
            self._ahead_at = i
            if self._ahead_buf is None:
                self._ahead_buf = memoryview(bytearray(CHUNK_SIZE))
            found = _read_and_hash(item, self._path(item), self._ahead_buf)
            if found is not None:
                self._ahead[i - 1] = found
            return True
        self._ahead_at = i
        return False

    def _maybe_compressed(
        self, item: FileItem, path: str, out: bytearray, buf: memoryview
    ) -> Generator[bytes, None, bytes]:
        """A candidate file, header included: compressed if its sample says it pays and the
        whole frame is smaller after all, else raw (`_file`); its sha256 either way."""
        if self._squeeze is None:
            self._squeeze = squeeze.Squeeze()
        fd = _open_unchanged(item, path)
        handed = False  # once `_file` has the fd, it closes it
        try:
            sample = _read_whole(fd, buf, item, min(item.size, squeeze.SAMPLE_BYTES))
            if sample is None:
                raise _changed(item.path)  # shorter than when it was scanned
            frame: list[bytes] | None = None
            if self._squeeze.pays(sample):
                sha = hashlib.sha256(sample)
                began = time.perf_counter()
                frame = self._compress(fd, item, sample, buf, sha)
                self._squeeze.pace(time.perf_counter() - began)
            if frame is None:
                os.lseek(fd, 0, os.SEEK_SET)
                out += tar_header(
                    item.path, is_dir=False, size=item.size, mtime=item.mtime_ns // 1_000_000_000
                )
                handed = True
                return (yield from self._file(item, path, out, buf, fd=fd))
            _check_unchanged(fd, item)
        finally:
            if not handed:
                os.close(fd)
        size = sum(map(len, frame))
        self.saved_bytes += item.size - size
        out += tar_header_by_tarfile(
            item.path, is_dir=False, size=size, mtime=item.mtime_ns // 1_000_000_000,
            raw_size=item.size,
        )  # fmt: skip
        for piece in frame:
            if len(piece) >= CHUNK_SIZE:
                # Sent as it is, after what `out` holds (this member's header at least).
                if out:
                    yield bytes(out)
                    out.clear()
                yield piece
            else:
                out += piece
                if len(out) >= CHUNK_SIZE:
                    yield bytes(out)
                    out.clear()
        out += _ZEROS[: -size % BLOCK]
        return sha.digest()

    def _compress(
        self,
        fd: int,
        item: FileItem,
        sample: memoryview,
        buf: memoryview,
        sha: hashlib._Hash,
    ) -> list[bytes] | None:
        """The file's zstd frame in pieces, `sample` (its start, hashed already) included and
        the rest read and hashed into `sha`; None if it did not shrink enough after all."""
        assert self._squeeze is not None
        compressor = self._squeeze.compressor(item.size)
        frame = [compressor.compress(sample)]
        remaining = item.size - len(sample)
        self.bytes_done += len(sample)
        while remaining:
            data = self._read_hashed(fd, item, buf, remaining, sha)
            piece = compressor.compress(data)
            if piece:
                frame.append(piece)
            remaining -= len(data)
        frame.append(compressor.flush())
        if sum(map(len, frame)) > squeeze.FILE_RATIO * item.size:
            self.bytes_done -= item.size  # `_file` reads (and counts) it again
            return None
        return frame

    def _read_hashed(
        self, fd: int, item: FileItem, buf: memoryview, remaining: int, sha: hashlib._Hash
    ) -> memoryview:
        """The file's next read (at most `READ_SIZE` of the `remaining` bytes, into `buf`),
        hashed into `sha` and counted in `bytes_done`."""
        want = buf[: min(remaining, READ_SIZE)]
        n = _read_into(fd, want, item)
        if not n:
            raise _changed(item.path)  # shorter than when it was scanned
        data = want[:n]
        sha.update(data)
        self.bytes_done += n
        return data

    def _file(
        self, item: FileItem, path: str, out: bytearray, buf: memoryview, *, fd: int = -1
    ) -> Generator[bytes, None, bytes]:
        """Stream one file's data (padded to a block) and return its sha256 (from `fd` if
        given, at its start: it is closed here either way).

        Data goes into `out` while it is small; a full read is sent straight from the buffer
        after flushing `out`, so no chunk is ever larger than the read buffer.
        """
        if fd < 0:
            fd = _open_unchanged(item, path)
        try:
            sha = hashlib.sha256()
            remaining = item.size
            while remaining:
                data = self._read_hashed(fd, item, buf, remaining, sha)
                n = len(data)
                remaining -= n
                if n >= CHUNK_SIZE:
                    if out:
                        yield bytes(out)
                        out.clear()
                    yield bytes(data)
                else:
                    out += data
                    if len(out) >= CHUNK_SIZE:
                        yield bytes(out)
                        out.clear()
            _check_unchanged(fd, item)
        finally:
            os.close(fd)
        out += _ZEROS[: -item.size % BLOCK]
        return sha.digest()


def _open_unchanged(item: FileItem, path: str) -> int:
    """Open the file of `item` for reading and make sure it is still what the scan saw."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):
            # gone or replaced by a link since the scan
            raise _changed(item.path) from None
        raise LocalFileError(
            f"cannot read {describe_os_error(exc)} (is a program still using it?); "
            "nothing was stored"
        ) from exc
    try:
        if not _as_scanned(os.fstat(fd), item):
            raise _changed(item.path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _as_scanned(st: os.stat_result, item: FileItem) -> bool:
    """Whether `st` is a regular file with the size and mtime the scan saw for `item`."""
    return stat.S_ISREG(st.st_mode) and st.st_size == item.size and st.st_mtime_ns == item.mtime_ns


def _read_whole(
    fd: int, buf: memoryview, item: FileItem, size: int | None = None
) -> memoryview | None:
    """All of small file `item` (or its first `size` bytes) read into `buf`; None if it ends
    early."""
    size = item.size if size is None else size
    got = 0
    while got < size:  # once, unless a read comes back short
        n = _read_into(fd, buf[got:size], item)
        if not n:
            return None
        got += n
    return buf[:got]


def _check_unchanged(fd: int, item: FileItem) -> os.stat_result:
    # Growth, an in-place rewrite or a touch all show in the size or mtime.
    after = os.fstat(fd)
    if after.st_size != item.size or after.st_mtime_ns != item.mtime_ns:
        raise _changed(item.path)
    return after


def _read_and_hash(
    item: FileItem, path: str, buf: memoryview
) -> tuple[bytes, int, int, int] | None:
    """`Pack.hash_ahead` for one file: (sha256, inode, mtime_ns, ctime_ns), or None when the
    file is not as the scan saw it, changes while it is read, or cannot be read."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        before = os.fstat(fd)
        data = _read_whole(fd, buf, item) if _as_scanned(before, item) else None
        if data is None:
            return None
        after = os.fstat(fd)
    except (OSError, LocalFileError):
        return None
    finally:
        os.close(fd)
    seen = (after.st_ino, after.st_mtime_ns, after.st_ctime_ns)
    if after.st_size != item.size or seen != (
        before.st_ino,
        before.st_mtime_ns,
        before.st_ctime_ns,
    ):
        return None
    return (hashlib.sha256(data).digest(), *seen)


def _read_into(fd: int, view: memoryview, item: FileItem) -> int:
    """Read from `fd` straight into `view` (no copy); the number of bytes read."""
    try:
        if _HAVE_READV:
            return os.readv(fd, [view])
        # FileIO.readinto exists on every platform (os.readv does not on Windows);
        # closefd=False leaves closing to the caller.
        return io.FileIO(fd, "rb", closefd=False).readinto(view) or 0
    except OSError as exc:
        exc.filename = item.path
        raise LocalFileError(f"cannot read {describe_os_error(exc)}; nothing was stored") from exc


def iter_stream(
    plan: Plan, root: str | os.PathLike[str] | None = None, *, now: int | None = None
) -> Pack:
    """The upload stream for `plan` (read from `root`, default `plan.root`).

    Iterate over the result for the bytes, then read its `manifest`/`manifest_sha256`.
    """
    if root is not None:
        plan = plan.with_root(os.path.abspath(os.fspath(root)))
    return Pack(plan, now=now)
