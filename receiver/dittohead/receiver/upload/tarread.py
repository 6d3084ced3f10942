"""Framing of the upload's tar stream: blocks, headers, extensions and data, read from one fd.

The receiver parses tar itself instead of using `tarfile`'s reader, for two reasons:

* speed (docs/design.md, "Performance by design"): one reusable buffer filled with
  ``readinto`` and data handed out as `memoryview` slices beats `tarfile`'s per-member file
  objects by 2x on large files;
* control (docs/design.md, "Tar header fields"): every extension that can change a member's
  name or size (ustar prefix, pax ``x``/``g`` records, GNU ``L`` long names) is applied
  *here*, strictly, before the name policy in `stage` sees the final name. Anything odd is
  refused rather than guessed at.

Each 512-byte header's checksum and number fields are checked exactly as
`tarfile.TarInfo.frombuf` checks them: a header whose numbers are all in the plain fixed-width
octal form every tar writer uses (and whose unsigned checksum matches) is read directly (about
1.5 µs instead of 11 µs); anything else goes to `frombuf` itself (a test holds the two to
the same answers). Its name handling is not used (it strips every trailing slash from
directories and reads GNU atime fields as a ustar prefix), the name is rebuilt from the raw
fields instead.

A member whose pax header carries ``DITTOHEAD.zstd=<size>`` is zstd-compressed (docs/protocol.md,
"Compression"): its tar size counts the compressed bytes on the wire, the record the bytes the
file will have; `Member.raw_size` says so and `stage` decompresses (`unzstd`).

This module decides nothing about names or limits; `stage` does. It only refuses what is wrong
as *tar*: bad checksums, member types other than files and folders, malformed extensions,
truncation, non-NUL padding and anything but NUL bytes after the end of the archive.
"""

from __future__ import annotations

import io
import select
import tarfile
from collections.abc import Iterator
from itertools import product
from typing import NamedTuple
from zlib import adler32

from dittohead.core.errors import TransferError, UploadRejected

BLOCK = 512
BUFFER_BYTES = 4 * 1024 * 1024
#: largest pax ``x``/``g`` or GNU ``L`` record this server reads (names are capped at 1 KiB)
MAX_EXTENSION_BYTES = 64 * 1024
#: pax global headers allowed per upload (each applies to all later members; a flood of them
#: would otherwise cost time without ever counting against a file or byte cap)
MAX_GLOBAL_HEADERS = 16
#: NUL padding accepted after the end-of-archive blocks (tar pads to its record size)
MAX_TRAILING_BYTES = 1024 * 1024
#: the pax key of a compressed member: its value is the file's size once decompressed
ZSTD_KEY = "DITTOHEAD.zstd"

_ZERO_BLOCK = bytes(BLOCK)
# The number fields of a header (mode, uid, gid, size, mtime, checksum, type) in the plain
# form: fixed-width octal digits ended by NUL or space; the checksum as GNU tar and tarfile
# write it (six digits, NUL, space) or seven digits. Types read the same way by `frombuf`
# (not GNU sparse, whose header holds more numbers).
_PLAIN_NUMBERS = rb"(?:[0-7]{7}[\0 ]){3}(?:[0-7]{11}[\0 ]){2}(?:[0-7]{6}\0 |[0-7]{7}[\0 ])[05\0xgL]"
# devmajor and devminor: plain octal or left empty (GNU format).
_PLAIN_DEVICES = rb"(?:[0-7]{7}[\0 ]|\0{8}){2}"
# `_plain` checks what these two expressions match (bytes 100..157 and 329..345) without
# running them (~0.15 instead of ~0.45 us a header; a test holds it to the expressions): every
# byte is mapped to its class (octal digit, NUL, space or other), and the classes of the fields
# must form one of the few shapes the expressions allow.
_CLASSES = bytes(
    ord("d") if 0x30 <= i <= 0x37 else ord("n") if i == 0 else ord("s") if i == 0x20 else ord("x")
    for i in range(256)
)
_SHORT = (b"ddddddd" + b"n", b"ddddddd" + b"s")  # 7 digits, NUL or space
_LONG = (b"ddddddddddd" + b"n", b"ddddddddddd" + b"s")  # 11 digits, NUL or space
_CHECKSUM = (b"dddddd" + b"ns", *_SHORT)
#: mode, uid, gid, size, mtime, checksum (bytes 100..156)
_NUMBER_SHAPES = frozenset(map(b"".join, product(_SHORT, _SHORT, _SHORT, _LONG, _LONG, _CHECKSUM)))
_PLAIN_TYPES = b"05\0xgL"  # byte 156
#: devmajor, devminor (bytes 329..345)
_DEVICE_SHAPES = frozenset(map(b"".join, product((*_SHORT, b"n" * 8), repeat=2)))
_POSIX_MAGIC = b"ustar\x0000"  # magic + version of POSIX ustar / pax
_GNU_MAGIC = b"ustar  \x00"  # old GNU format: bytes 345..500 hold atime/ctime, not a prefix

# The member types, as `tarfile` names them (spelled out here: `tarfile` itself, with shutil,
# bz2 and lzma behind it, is only imported for an odd header, off the start-up path of every
# upload; a test holds these to tarfile's values).
REGTYPE, AREGTYPE, DIRTYPE = b"0", b"\0", b"5"
XHDTYPE, XGLTYPE, GNUTYPE_LONGNAME = b"x", b"g", b"L"
_FILE_TYPES = (REGTYPE, AREGTYPE)
_REFUSED_TYPES = {
    b"1": "a hard link",  # tarfile.LNKTYPE
    b"2": "a symbolic link",  # SYMTYPE
    b"3": "a character device",  # CHRTYPE
    b"4": "a block device",  # BLKTYPE
    b"6": "a FIFO (named pipe)",  # FIFOTYPE
    b"7": "a contiguous file",  # CONTTYPE
    b"S": "a sparse file",  # GNUTYPE_SPARSE
    b"K": "a GNU long link name",  # GNUTYPE_LONGLINK
    b"M": "a multi-volume continuation",
    b"V": "a volume label",
    b"D": "a GNU dump directory",
    b"N": "an old GNU long-name record",
    b"X": "a Solaris extended header",
}


def malformed(why: str) -> UploadRejected:
    return UploadRejected(
        f"malformed archive: {why}; nothing was stored. Send with the dittohead client"
    )


def truncated() -> UploadRejected:
    return UploadRejected(
        "incomplete upload: the connection ended early; nothing was stored. Send again"
    )


def _refused(name: str, what: str) -> UploadRejected:
    return UploadRejected(
        f"{name!r} is {what}; only regular files and folders can be sent; nothing was stored"
    )


class Stream:
    """A file descriptor read as blocks and data chunks through one reusable buffer.

    Every read first waits (poll) at most `stall_timeout` seconds for the fd to become
    readable, so a client that stops sending is cut off instead of holding the entry forever.
    """

    def __init__(self, fd: int, *, stall_timeout: float, bufsize: int = BUFFER_BYTES) -> None:
        if bufsize < BLOCK:
            raise ValueError("the buffer must hold at least one block")
        self._buf = bytearray(bufsize)
        self._view = memoryview(self._buf)
        self._start = 0  # first unread byte
        self._end = 0  # end of the bytes read so far
        self._file = io.FileIO(fd, "rb", closefd=False)
        self._stall = stall_timeout
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN | select.POLLPRI)
        self.unread = 0  # data bytes of the current member not consumed yet

    def _fill(self) -> bool:
        """Read more bytes behind what is buffered; False at end of input."""
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buf):
            # Only a header or padding can straddle the end: move that short tail to the front.
            tail = bytes(self._view[self._start : self._end])
            self._buf[: len(tail)] = tail
            self._start, self._end = 0, len(tail)
        while True:
            if not self._poll.poll(self._stall * 1000):
                raise TransferError(
                    f"no data arrived for {self._stall:g} seconds; the upload was stopped and "
                    "nothing was stored. Check the network and send again"
                )
            count = self._file.readinto(self._view[self._end :])
            if count is None:  # non-blocking fd with nothing to read after all
                continue
            self._end += count
            return count > 0

    def block(self) -> bytes:
        """The next 512 bytes; `truncated` if the input ends first."""
        while self._end - self._start < BLOCK:
            if not self._fill():
                raise truncated()
        start = self._start
        self._start += BLOCK
        return bytes(self._view[start : start + BLOCK])

    def chunks(self, size: int) -> Iterator[memoryview]:
        """`size` bytes as views into the buffer; each view is only valid until the next one."""
        remaining = size
        while remaining:
            if self._start == self._end and not self._fill():
                raise truncated()
            count = min(remaining, self._end - self._start)
            start = self._start
            self._start += count
            remaining -= count
            self.unread -= count
            yield self._view[start : start + count]

    def whole(self, size: int) -> memoryview | None:
        """`size` bytes and their NUL padding, if all of them are buffered already: the data as
        one view (valid until the next read), the padding consumed and checked. Else None, and
        nothing is consumed (read them with `chunks` and `skip_padding`)."""
        start = self._start
        end = start + size
        pad = -size % BLOCK
        if self._end - end < pad:
            return None
        if pad and self._buf.count(0, end, end + pad) != pad:
            raise malformed("there are stray bytes after the data of a member")
        self._start = end + pad
        self.unread -= size
        return self._view[start:end]

    def read(self, size: int) -> bytes:
        """`size` bytes as one object (callers bound `size`)."""
        return b"".join(bytes(chunk) for chunk in self.chunks(size))

    def skip_padding(self, size: int) -> None:
        """Consume the padding after `size` data bytes; it must be NUL (anything else is junk)."""
        pad = -size % BLOCK
        if pad:
            self.unread += pad
            if self.read(pad).count(0) != pad:
                raise malformed("there are stray bytes after the data of a member")

    def expect_end(self, limit: int = MAX_TRAILING_BYTES) -> None:
        """After end-of-archive: at most `limit` NUL bytes, then end of input."""
        seen = 0
        while self._start < self._end or self._fill():
            chunk = self._view[self._start : self._end]
            seen += len(chunk)
            if bytes(chunk).count(0) != len(chunk):
                raise malformed("there is data after the end of the archive")
            if seen > limit:
                raise malformed(f"more than {limit} bytes follow the end of the archive")
            self._start = self._end


class Member(NamedTuple):
    """A directory or regular file, with every extension applied to its name and size.

    A named tuple (immutable like a frozen dataclass, built in a third of its time: one per
    member)."""

    name: str  # as sent: not yet checked, may still carry a leading "./" or a trailing "/"
    is_dir: bool
    size: int  # data bytes in the stream (compressed ones, for a compressed member)
    #: the file's own size if its data is a zstd frame (pax ``DITTOHEAD.zstd``), else -1
    raw_size: int = -1


def parse_pax(data: bytes) -> dict[str, str]:
    """Parse pax records (``"<len> <key>=<value>\\n"``) strictly; refuse anything else."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 20)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():  # bytes.isdigit: ASCII digits only
            raise malformed("a pax record has no valid length")
        end = pos + int(digits)
        if end <= space + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise malformed("a pax record has a wrong length")
        key, sep, value = data[space + 1 : end - 1].partition(b"=")
        if not sep or not key:
            raise malformed("a pax record is not key=value")
        try:
            text_key = key.decode("utf-8")
        except UnicodeDecodeError:
            raise malformed("a pax key is not UTF-8") from None
        if text_key.startswith("GNU.sparse."):
            raise UploadRejected(
                "the archive holds a sparse file (pax GNU.sparse records); only regular files "
                "and folders can be sent; nothing was stored"
            )
        if text_key in records:
            raise malformed(f"the pax key {text_key!r} appears twice in one header")
        # Values stay undecodable-as-is (surrogateescape) so the name policy reports a
        # non-UTF-8 name in its own words instead of a decoding error here.
        records[text_key] = value.decode("utf-8", "surrogateescape")
        pos = end
    return records


def _text(field: bytes) -> str:
    """A NUL-terminated header field as text (UTF-8; bad bytes survive as surrogates)."""
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def byte_sum(block: bytes) -> int:
    """The sum of a 512-byte block's bytes, computed in C: Adler-32 keeps 1 + the byte sum
    modulo 65521 in its low 16 bits, which is exact for 256 bytes (at most 65,280)."""
    return (adler32(block[:256]) & 0xFFFF) + (adler32(block[256:]) & 0xFFFF) - 2


def _plain(block: bytes) -> bool:
    """Whether the header's number fields match _PLAIN_NUMBERS and _PLAIN_DEVICES."""
    return (
        block[100:156].translate(_CLASSES) in _NUMBER_SHAPES
        and block[156] in _PLAIN_TYPES
        and block[329:345].translate(_CLASSES) in _DEVICE_SHAPES
    )


def header_size(block: bytes) -> int:
    """The size field of a non-zero header block, once its checksum and every number field
    passed the checks of `tarfile.TarInfo.frombuf` (whose answer this always equals)."""
    if _plain(block) and int(block[148:155].rstrip(b"\0 "), 8) == 256 + byte_sum(block) - sum(
        block[148:156]
    ):
        return int(block[124:135], 8)
    # Anything else (base-256 numbers, odd spacing, a signed checksum, a sparse header) is
    # judged by tarfile itself.
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape").size
    except (tarfile.TarError, ValueError, IndexError) as exc:
        raise malformed(f"a header is not valid ({exc})") from None


def _size(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise malformed(f"the pax size {text!r} is not a number")
    return int(text)


class TarReader:
    """Members of a tar stream, one at a time, with pax and GNU extensions applied.

    Call `next_member` until it returns None (end of archive), then `finish`. After a file
    member, read its data with `data` before asking for the next member.
    """

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._global: dict[str, str] = {}
        self._globals_seen = 0

    def _extension(self, size: int) -> bytes:
        if not 0 <= size <= MAX_EXTENSION_BYTES:
            raise malformed(f"an extended header is larger than {MAX_EXTENSION_BYTES} bytes")
        self._stream.unread = size
        data = self._stream.read(size)
        self._stream.skip_padding(size)
        return data

    def next_member(self) -> Member | None:
        if self._stream.unread:
            raise RuntimeError("the data of the previous member was not read")
        pax: dict[str, str] | None = None
        longname: str | None = None
        while True:
            block = self._stream.block()
            if block == _ZERO_BLOCK:
                if pax is not None or longname is not None:
                    raise malformed("an extended header is not followed by a member")
                return None
            size = header_size(block)
            if block[257:265] not in (_POSIX_MAGIC, _GNU_MAGIC):
                raise malformed("a header is not in ustar, pax or GNU format")
            kind = block[156:157]
            if kind == XHDTYPE:
                if pax is not None:
                    raise malformed("two pax headers precede one member")
                pax = parse_pax(self._extension(size))
            elif kind == XGLTYPE:
                if pax is not None or longname is not None:
                    raise malformed("a pax global header sits between a member and its header")
                self._globals_seen += 1
                if self._globals_seen > MAX_GLOBAL_HEADERS:
                    raise malformed(f"more than {MAX_GLOBAL_HEADERS} pax global headers")
                for key, value in parse_pax(self._extension(size)).items():
                    if key == ZSTD_KEY:
                        raise malformed(f"the pax record {ZSTD_KEY} is in a global header")
                    if value:
                        self._global[key] = value
                    else:  # POSIX: an empty value deletes the keyword
                        self._global.pop(key, None)
            elif kind == GNUTYPE_LONGNAME:
                if longname is not None:
                    raise malformed("two GNU long names precede one member")
                longname = _text(self._extension(size))
            else:
                return self._member(block, size, kind, pax, longname)

    def _member(
        self,
        block: bytes,
        stated_size: int,
        kind: bytes,
        pax: dict[str, str] | None,
        longname: str | None,
    ) -> Member:
        if pax is not None and longname is not None:
            raise malformed("a member has both a GNU long name and a pax header")
        records = self._global  # read only; copied below before a pax header changes it
        if pax is not None:
            records = dict(records)
            for key, value in pax.items():
                if value:
                    records[key] = value
                else:
                    records.pop(key, None)
        name = block[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")  # _text, inlined
        if block[345] and block[257:265] == _POSIX_MAGIC:  # a ustar prefix that is not empty
            name = f"{_text(block[345:500])}/{name}"
        if longname is not None:
            name = longname
        name = records.get("path", name)
        size = _size(records["size"]) if "size" in records else stated_size
        if size < 0:
            raise malformed(f"{name!r} has a negative size")
        if kind in _FILE_TYPES:
            self._stream.unread = size
            if pax is not None and ZSTD_KEY in pax:
                return Member(name, False, size, _size(pax[ZSTD_KEY]))
            return Member(name, False, size)
        if pax is not None and ZSTD_KEY in pax:
            raise malformed(f"{name!r} is not a file but carries {ZSTD_KEY}")
        if kind == DIRTYPE:
            if size:
                raise malformed(f"the folder {name!r} carries data")
            return Member(name, True, 0)
        what = _REFUSED_TYPES.get(kind, f"of an unknown tar member type {kind!r}")
        raise _refused(name, what)

    def whole(self, member: Member) -> memoryview | None:
        """All the data of file `member` as one view (valid until the next read), if it and its
        padding are in the buffer already, as small members usually are; else None (read it
        with `data`)."""
        return self._stream.whole(member.size)

    def data(self, member: Member) -> Iterator[memoryview]:
        """The data of file `member`, as views valid until the next one is produced."""
        yield from self._stream.chunks(member.size)
        self._stream.skip_padding(member.size)

    def finish(self) -> None:
        """After the first end-of-archive block: the second one, NUL padding, end of input."""
        if self._stream.block() != _ZERO_BLOCK:
            raise malformed("the end-of-archive marker is followed by more members")
        self._stream.expect_end()
