"""Reading ahead (`Pack.hash_ahead`): while ssh cannot take more of the stream, the client
reads and hashes small files the stream has not reached yet, and the stream then sends them
without hashing them again. The stream and the manifest are exactly what they are without it,
and a file that changed in between is hashed as it is sent."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from dittohead.client import pack as pack_module
from dittohead.client.pack import CHUNK_SIZE, Pack, iter_stream
from dittohead.client.plan.scan import scan
from dittohead.client.transport import openssh

from .conftest import write_tree

NOW = 1_700_000_000


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    files = {f"s{i}/t{j}.txt": os.urandom(300 + 97 * i + j) for i in range(6) for j in range(30)}
    files["big.bin"] = os.urandom(CHUNK_SIZE * 3 + 5)
    files["s0/empty.txt"] = b""
    return write_tree(tmp_path / "d", files)


def _plain(folder: Path) -> tuple[bytes, bytes]:
    pack = iter_stream(scan(folder), now=NOW)
    return b"".join(pack), pack.manifest_json


def _all_read_ahead(folder: Path) -> Pack:
    """The pack of `folder` with every small file read ahead, before the stream starts."""
    pack = iter_stream(scan(folder), now=NOW)
    while pack.hash_ahead():
        pass
    return pack


def _with_ahead_after_each_chunk(pack: Pack, per_chunk: int) -> bytes:
    out = []
    for chunk in pack:
        out.append(chunk)
        for _ in range(per_chunk):
            pack.hash_ahead()
    return b"".join(out)


@pytest.mark.parametrize("per_chunk", [1, 7, 10_000])
def test_reading_ahead_changes_nothing_in_the_stream(folder: Path, per_chunk: int) -> None:
    plain = _plain(folder)
    pack = iter_stream(scan(folder), now=NOW)
    # before the first chunk too, as while ssh sets up its session
    ahead_first = sum(1 for _ in range(50) if pack.hash_ahead())
    assert ahead_first == 50
    assert (_with_ahead_after_each_chunk(pack, per_chunk), pack.manifest_json) == plain


def test_the_stream_uses_what_was_read_ahead(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _plain(folder)
    hashed: list[int] = []
    real = hashlib.sha256

    def counting(data: bytes | memoryview = b"") -> object:
        hashed.append(len(data))
        return real(data)

    pack = _all_read_ahead(folder)
    monkeypatch.setattr(hashlib, "sha256", counting)
    assert (b"".join(pack), pack.manifest_json) == plain
    # No file is hashed in one go while streamed: all the small ones were read ahead. (The two
    # empty hash objects are big.bin's, too large to read ahead, and the manifest's, both fed
    # piece by piece as they stream.)
    assert hashed == [0, 0]


def test_nothing_is_read_ahead_beyond_the_limit(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pack_module, "AHEAD_FILES", 5)
    pack = iter_stream(scan(folder), now=NOW)
    assert sum(1 for _ in range(100) if pack.hash_ahead()) == 5
    assert not pack.hash_ahead()


def test_a_file_changed_after_it_was_read_ahead_is_hashed_as_sent(folder: Path) -> None:
    target = folder / "s3" / "t7.txt"
    pack = _all_read_ahead(folder)
    # Same size and, set back, the same mtime as the scan saw: only the ctime (and the bytes)
    # tell. (The ctime clock may be coarse: step past its tick first.)
    time.sleep(0.05)
    st = target.stat()
    target.write_bytes(os.urandom(st.st_size))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (b"".join(pack), pack.manifest_json) == _plain(folder)


def test_a_file_replaced_after_it_was_read_ahead_is_judged_as_always(folder: Path) -> None:
    # Another inode with the same size and mtime (a copy moved into place): not the file
    # that was read ahead, so it is read and hashed as it is sent.
    target = folder / "s2" / "t3.txt"
    pack = _all_read_ahead(folder)
    st = target.stat()
    other = folder / "other.tmp"
    other.write_bytes(os.urandom(st.st_size))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, target)
    assert (b"".join(pack), pack.manifest_json) == _plain(folder)


def test_ssh_not_reading_yet_lets_the_client_read_ahead(folder: Path) -> None:
    # A pipe whose reader starts late, as ssh before its session: the client reads ahead
    # meanwhile, writes the same stream, and waits in write again once the reader has come.
    plain = _plain(folder)
    read_fd, write_fd = os.pipe()
    got: list[bytes] = []

    def late_reader() -> None:
        time.sleep(0.3)
        while chunk := os.read(read_fd, 1 << 16):
            got.append(chunk)

    reader = threading.Thread(target=late_reader)
    reader.start()
    pack = iter_stream(scan(folder), now=NOW)
    calls = {"n": 0}
    real = pack.hash_ahead

    def counted() -> bool:
        calls["n"] += 1
        return real()

    pack.hash_ahead = counted  # type: ignore[method-assign]
    try:
        assert openssh._stream(write_fd, pack, None)
        assert os.get_blocking(write_fd)
    finally:
        os.close(write_fd)
        reader.join()
        os.close(read_fd)
    assert (b"".join(got), pack.manifest_json) == plain
    assert calls["n"] > 0
