"""The tar framing (`tarread`): headers, extensions and data over a small reusable buffer."""

from __future__ import annotations

import io
import os
import tarfile
import time

import pytest

from dittohead.core.errors import UploadRejected
from dittohead.receiver.upload.tarread import Member, Stream, TarReader, parse_pax
from tests.hostile import streams as ts


def members(data: bytes, bufsize: int = 1024) -> list[tuple[Member, bytes]]:
    """Every member with its data, read from a memfd through a `bufsize` buffer."""
    fd = os.memfd_create("tar")
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        reader = TarReader(Stream(fd, stall_timeout=5, bufsize=bufsize))
        found = []
        while (member := reader.next_member()) is not None:
            whole = None if member.is_dir else reader.whole(member)
            if member.is_dir:
                body = b""
            elif whole is not None:  # the member and its padding were buffered already
                body = bytes(whole)
            else:
                body = b"".join(bytes(c) for c in reader.data(member))
            found.append((member, body))
        reader.finish()
        return found
    finally:
        os.close(fd)


def test_pax_records_parse_strictly() -> None:
    data = ts.pax_record("path", "a b=c\n") + ts.pax_record("size", "12")
    assert parse_pax(data) == {"path": "a b=c\n", "size": "12"}
    assert parse_pax(b"") == {}
    for bad in (
        b"5 a=b\n",  # length too short
        b"x a=b\n",  # no length
        b"7 a=b\nX",  # junk after the last record
        b"6 a=bX",  # no newline
        b"6 =bc\n",  # empty key
        b"-6 a=b\n",
        b" 6 a=b\n",
    ):
        with pytest.raises(UploadRejected, match="malformed archive"):
            parse_pax(bad)


def test_values_keep_undecodable_bytes_for_the_name_policy() -> None:
    assert parse_pax(ts.pax_record(b"path", b"caf\xe9"))["path"] == "caf\udce9"
    with pytest.raises(UploadRejected, match="not UTF-8"):
        parse_pax(ts.pax_record(b"p\xffth", b"x"))


def test_names_sizes_and_types_come_from_every_extension() -> None:
    stream = (
        ts.member("plain.txt", b"p")
        + ts.member("name.txt", b"u", prefix="pre/fix")
        + ts.longname("gnu/" + "l" * 200) + ts.member("ignored", b"g", magic=ts.GNU_MAGIC)
        + ts.pax([("path", "pax/name"), ("size", "2")]) + ts.header("x", size=9) + ts.pad(b"xx")
        + ts.folder("dir/")
        + ts.header("v7dir/", kind=b"\0")  # an old-style "regular file" with a slash stays a file
        + ts.end()
    )  # fmt: skip
    got = [(m.name, m.is_dir, m.size, body) for m, body in members(stream, bufsize=512)]
    assert got == [
        ("plain.txt", False, 1, b"p"),
        ("pre/fix/name.txt", False, 1, b"u"),
        ("gnu/" + "l" * 200, False, 1, b"g"),
        ("pax/name", False, 2, b"xx"),
        ("dir/", True, 0, b""),
        ("v7dir/", False, 0, b""),
    ]


def test_gnu_headers_have_no_ustar_prefix() -> None:
    # In the old GNU format, bytes 345.. hold atime/ctime: reading them as a prefix would
    # invent folder names.
    stream = ts.member("n.txt", b"1", prefix="12345670123", magic=ts.GNU_MAGIC) + ts.end()
    assert [m.name for m, _ in members(stream)] == ["n.txt"]


def test_a_header_straddling_the_buffer_end_is_reassembled() -> None:
    files = [ts.member(f"f{i}", b"x" * i) for i in range(1, 40)]
    got = members(b"".join(files) + ts.end(), bufsize=700)
    assert [(m.name, len(b)) for m, b in got] == [(f"f{i}", i) for i in range(1, 40)]


def test_reading_on_without_the_data_is_a_programming_error() -> None:
    fd = os.memfd_create("tar")
    os.write(fd, ts.member("a", b"data") + ts.end())
    os.lseek(fd, 0, os.SEEK_SET)
    reader = TarReader(Stream(fd, stall_timeout=5))
    assert reader.next_member() == Member("a", False, 4)
    with pytest.raises(RuntimeError):
        reader.next_member()
    os.close(fd)


def test_python_tarfile_output_round_trips() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("a/" + "é" * 80, b"1" * 5000), ("b", b"")]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), time.time()
            tar.addfile(info, io.BytesIO(data))
    got = [(m.name, len(body)) for m, body in members(out.getvalue(), bufsize=4096)]
    assert got == [("a/" + "é" * 80, 5000), ("b", 0)]


def test_every_buffer_size_reads_the_same_members() -> None:
    # Small members come out of the buffer as one view (`TarReader.whole`) when they and
    # their padding are buffered, else chunk by chunk (`data`); both give the same bytes.
    bodies = [b"", b"x", b"y" * 511, b"z" * 512, b"w" * 513, bytes(range(256)) * 9]
    stream = b"".join(ts.member(f"f{i}", body) for i, body in enumerate(bodies)) + ts.end()
    want = [(f"f{i}", body) for i, body in enumerate(bodies)]
    for bufsize in (512, 700, 1024, 1536, 4096, 1 << 20):
        got = [(m.name, body) for m, body in members(stream, bufsize=bufsize)]
        assert got == want, bufsize


@pytest.mark.parametrize("bufsize", [512, 1024, 1 << 20])
def test_junk_in_the_padding_is_refused_whatever_the_buffer(bufsize: int) -> None:
    good = ts.member("a", b"abc")
    spoiled = good[:-1] + b"!"  # the last padding byte of the member
    with pytest.raises(UploadRejected, match="stray bytes after the data"):
        members(spoiled + ts.end(), bufsize=bufsize)
