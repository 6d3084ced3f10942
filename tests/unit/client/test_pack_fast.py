"""pack's short cuts produce exactly what the general way produced: headers from a template
byte for byte as `tarfile` writes them, small files read in one go, reads with ``os.readv``
or with ``FileIO`` (Windows), short reads, and read errors."""

from __future__ import annotations

import errno
import io
import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dittohead.client import pack as pack_module
from dittohead.client.pack import (
    BLOCK,
    CHUNK_SIZE,
    READ_SIZE,
    iter_stream,
    tar_header,
    tar_header_by_tarfile,
)
from dittohead.client.plan.scan import scan
from dittohead.core.errors import LocalFileError

from .conftest import write_tree

NAME_CHARS = "abcXYZ019._- ~()\u00e9\u00fc\u4e2d"


@given(
    name=st.text(alphabet=NAME_CHARS, min_size=1, max_size=8).flatmap(
        lambda stem: st.integers(0, 110).map(lambda n: (stem * 110)[: max(n, 1)])
    ),
    is_dir=st.booleans(),
    size=st.one_of(st.integers(0, 1 << 40), st.integers(8**11 - 2, 8**11 + 2)),
    mtime=st.one_of(st.integers(0, 2**33), st.integers(-3, 3), st.integers(8**11 - 2, 8**11 + 2)),
)
@example(name="x" * 99, is_dir=True, size=0, mtime=0)
@example(name="x" * 100, is_dir=True, size=0, mtime=0)
@example(name="x" * 100, is_dir=False, size=8**11 - 1, mtime=8**11 - 1)
@example(name="x" * 101, is_dir=False, size=8**11, mtime=8**11)
@example(name="\u00e9", is_dir=False, size=1, mtime=-1)
def test_headers_are_the_bytes_tarfile_writes(
    name: str, is_dir: bool, size: int, mtime: int
) -> None:
    if is_dir:
        size = 0
    expected = tar_header_by_tarfile(name, is_dir=is_dir, size=size, mtime=mtime)
    assert tar_header(name, is_dir=is_dir, size=size, mtime=mtime) == expected


def test_template_headers_read_back_with_tarfile() -> None:
    blocks = (
        tar_header("sub1/ses2", is_dir=True, mtime=1_700_000_000)
        + tar_header("sub1/ses2/trial 01.txt", is_dir=False, size=5, mtime=1_700_000_001)
        + b"hello"
        + bytes(BLOCK - 5)
        + bytes(2 * BLOCK)
    )
    with tarfile.open(fileobj=io.BytesIO(blocks), mode="r|") as tar:
        members = [(m.name, m.type, m.mode, m.size, m.mtime, m.uid, m.uname) for m in tar]
    assert members == [
        ("sub1/ses2", tarfile.DIRTYPE, 0o755, 0, 1_700_000_000, 0, ""),
        ("sub1/ses2/trial 01.txt", tarfile.REGTYPE, 0o644, 5, 1_700_000_001, 0, ""),
    ]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    # d0/f0.txt is empty: it is never read
    files = {f"d{i}/f{j}.txt": os.urandom(i * 700 + j * 3) for i in range(4) for j in range(5)}
    files["big.bin"] = os.urandom(READ_SIZE + CHUNK_SIZE + 17)
    files["mid.bin"] = os.urandom(CHUNK_SIZE)
    files["just-small.bin"] = os.urandom(CHUNK_SIZE - 1)
    return write_tree(tmp_path / "d", files)


def _stream(folder: Path) -> tuple[bytes, bytes]:
    pack = iter_stream(scan(folder), now=1_700_000_000)
    return b"".join(pack), pack.manifest_json


def test_short_reads_and_the_fileio_fallback_give_the_same_stream(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = _stream(folder)
    real_readv = os.readv

    def short_readv(fd: int, buffers: list[memoryview]) -> int:
        return real_readv(fd, [buffers[0][:100]])

    monkeypatch.setattr(os, "readv", short_readv)
    assert _stream(folder) == plain
    monkeypatch.setattr(pack_module, "_HAVE_READV", False)
    assert _stream(folder) == plain


@pytest.mark.parametrize("name", ["d1/f2.txt", "big.bin"])
def test_a_file_ending_early_is_refused(
    folder: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    plan = scan(folder)
    real_readv = os.readv
    calls = {"n": 0}

    def eof_in_target(fd: int, buffers: list[memoryview]) -> int:
        # The target is the only file of its size: cut it short after its first read.
        if os.fstat(fd).st_size == (folder / name).stat().st_size:
            calls["n"] += 1
            if calls["n"] > 1:
                return 0
            return real_readv(fd, [buffers[0][: len(buffers[0]) // 2]])
        return real_readv(fd, buffers)

    monkeypatch.setattr(os, "readv", eof_in_target)
    with pytest.raises(LocalFileError, match=f"{name} changed while it was being sent"):
        b"".join(iter_stream(plan))


@pytest.mark.parametrize(("things", "first"), [((), "big.bin"), (("d0",), "d0/f1.txt")])
def test_a_read_error_names_the_file(
    folder: Path, monkeypatch: pytest.MonkeyPatch, things: tuple[str, ...], first: str
) -> None:
    plan = scan(folder, things)

    def broken(fd: int, buffers: list[memoryview]) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "readv", broken)
    with pytest.raises(LocalFileError) as info:
        b"".join(iter_stream(plan))
    assert info.value.message == f"cannot read {first}: Input/output error; nothing was stored"
