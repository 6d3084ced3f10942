"""The header fast path (`tarread.header_size`) gives exactly `tarfile.TarInfo.frombuf`'s
answer: the same size, or a refusal with the same words, for every header, plain or odd."""

from __future__ import annotations

import io
import re
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dittohead.core.errors import UploadRejected
from dittohead.receiver.upload import tarread
from tests.hostile import streams as ts

# What `tarread._plain` checks: the number fields and the device numbers.
NUMBERS = re.compile(tarread._PLAIN_NUMBERS)
DEVICES = re.compile(tarread._PLAIN_DEVICES)


def reference(block: bytes) -> int | str:
    """What the receiver answered before the fast path: frombuf's size or its refusal."""
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape").size
    except (tarfile.TarError, ValueError, IndexError) as exc:
        return tarread.malformed(f"a header is not valid ({exc})").message


def fast(block: bytes) -> int | str:
    try:
        return tarread.header_size(block)
    except UploadRejected as exc:
        return exc.message


def _plain(width: int) -> st.SearchStrategy[bytes]:
    value = st.integers(0, 8 ** (width - 1) - 1)
    return st.one_of(
        value.map(lambda n: b"%0*o\0" % (width - 1, n)),  # tarfile, GNU tar
        value.map(lambda n: b"%0*o " % (width - 1, n)),
        st.just(b"\0" * width),
    )


def _odd(width: int) -> st.SearchStrategy[bytes]:
    value = st.integers(0, 8 ** (width - 1) - 1)
    return st.one_of(
        value.map(lambda n: (b" %o\0" % n)[:width].ljust(width, b"\0")),  # leading space
        value.map(lambda n: b"%0*o" % (width, n % 8**width)),  # no terminator
        st.integers(0, 2**40).map(lambda n: b"\x80" + n.to_bytes(width - 1, "big")),  # base-256
        st.just(b"\xff" * width),  # base-256, negative
        st.sampled_from([b"+12\0", b"1_2\0", b"-1\0", b"12x\0", b"8\0", b"\t7\0", b"7 7\0"]).map(
            lambda raw: raw.ljust(width, b"\0")
        ),
        st.binary(min_size=width, max_size=width),
    )


def _checksum(block: bytearray, form: int) -> bytes:
    unsigned = 256 + sum(block[:148]) + sum(block[156:])
    signed = 256 + sum(struct.unpack_from("148b8x356b", block))
    return [
        b"%06o\0 " % unsigned,
        b"%07o\0" % unsigned,
        b"%07o " % unsigned,
        b"%06o\0 " % signed,
        b"%06o\0 " % (unsigned + 1),
        b" %06o\0" % unsigned,
        b"\x80" + unsigned.to_bytes(7, "big"),
    ][form]


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    block = bytearray(512)
    block[0:100] = draw(st.binary(min_size=100, max_size=100))
    fields = ((100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (329, 8), (337, 8))
    odd = draw(st.sets(st.integers(0, len(fields) - 1), max_size=2))  # mostly plain headers
    for index, (start, width) in enumerate(fields):
        block[start : start + width] = draw(_odd(width) if index in odd else _plain(width))
    block[156:157] = draw(st.sampled_from([b"0", b"5", b"\0", b"x", b"g", b"L", b"S", b"2", b"K"]))
    block[257:265] = draw(st.sampled_from([ts.POSIX_MAGIC, ts.GNU_MAGIC]))
    block[345:500] = draw(st.binary(min_size=155, max_size=155))
    block[148:156] = _checksum(block, draw(st.integers(0, 6)))
    return bytes(block)


@given(headers())
@example(ts.header("a", size=5))
@example(ts.header("é/a", size=8**11 - 1, kind=b"5"))
@example(ts.header("a", size=1, checksum_delta=1))
@example(ts.header("sparse", kind=b"S", prefix=b"x" * 155))
@example(ts.header("a", size_field=b"\x80" + (2**40).to_bytes(11, "big")))
def test_the_fast_path_answers_as_tarfile_does(block: bytes) -> None:
    if block == bytes(512):
        return  # the end-of-archive block never reaches header_size
    assert fast(block) == reference(block)


def _headers_of(archive: bytes) -> list[bytes]:
    found, pos = [], 0
    while archive[pos : pos + 512].strip(b"\0"):
        block = archive[pos : pos + 512]
        found.append(block)
        pos += 512 + -(-reference(block) // 512) * 512  # type: ignore[operator]
    return found


@pytest.mark.parametrize("fmt", ["gnu", "oldgnu", "posix", "ustar"])
def test_gnu_tar_headers_take_the_fast_path(tmp_path: Path, fmt: str) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ("é" * 40)).write_bytes(b"x" * 1000)
    (tmp_path / ("p" * 60)).mkdir()
    (tmp_path / ("p" * 60) / ("l" * 90)).write_bytes(b"")  # long name: L, pax or prefix
    archive = subprocess.run(
        ["tar", f"--format={fmt}", "-cf", "-", "-C", str(tmp_path), "."],
        capture_output=True,
        check=True,
    ).stdout
    blocks = _headers_of(archive)
    assert len(blocks) >= 4
    for block in blocks:
        assert NUMBERS.fullmatch(block, 100, 157), block[100:157]
        assert DEVICES.fullmatch(block, 329, 345), block[329:345]
        assert tarread._plain(block)
        assert fast(block) == reference(block)


def test_python_tarfile_headers_take_the_fast_path() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, size in [("a/" + "é" * 80, 5000), ("b", 0), ("c" * 120, 3)]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = size, 1_700_000_000
            tar.addfile(info, io.BytesIO(b"\0" * size))
    for block in _headers_of(out.getvalue()):
        assert NUMBERS.fullmatch(block, 100, 157), block[100:157]
        assert tarread._plain(block)
        assert fast(block) == reference(block)


@st.composite
def near_plain(draw: st.DrawFn) -> bytes:
    """A plain header, with a few bytes of its number fields replaced by digits, NULs,
    spaces or anything else."""
    block = bytearray(draw(headers()))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.one_of(st.integers(100, 156), st.integers(329, 344)))
        block[at] = draw(st.sampled_from([0, 0x20, 0x30, 0x37, 0x38, 0x2B, 0x78, 0x67, 0x4C, 0xFF]))
    return bytes(block)


@settings(max_examples=2000)
@given(st.one_of(headers(), near_plain(), st.binary(min_size=512, max_size=512)))
@example(ts.header("a", size=5))
@example(ts.header("a", size=5, kind=b"1"))
def test_the_shapes_check_what_the_expressions_match(block: bytes) -> None:
    numbers = NUMBERS.fullmatch(block, 100, 157)
    devices = DEVICES.fullmatch(block, 329, 345)
    assert tarread._plain(block) == bool(numbers and devices)


@given(st.binary(min_size=512, max_size=512))
@example(b"\xff" * 512)
@example(bytes(512))
def test_byte_sum_is_the_sum_of_the_bytes(block: bytes) -> None:
    assert tarread.byte_sum(block) == sum(block)


def test_member_types_are_tarfile_s() -> None:
    # tarread spells them out so as not to import tarfile at start-up.
    assert (tarread.REGTYPE, tarread.AREGTYPE, tarread.DIRTYPE) == (
        tarfile.REGTYPE,
        tarfile.AREGTYPE,
        tarfile.DIRTYPE,
    )
    assert (tarread.XHDTYPE, tarread.XGLTYPE, tarread.GNUTYPE_LONGNAME) == (
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.GNUTYPE_LONGNAME,
    )
    named = {
        tarfile.LNKTYPE: "a hard link",
        tarfile.SYMTYPE: "a symbolic link",
        tarfile.CHRTYPE: "a character device",
        tarfile.BLKTYPE: "a block device",
        tarfile.FIFOTYPE: "a FIFO (named pipe)",
        tarfile.CONTTYPE: "a contiguous file",
        tarfile.GNUTYPE_SPARSE: "a sparse file",
        tarfile.GNUTYPE_LONGLINK: "a GNU long link name",
    }
    assert {k: v for k, v in tarread._REFUSED_TYPES.items() if k in named} == named
