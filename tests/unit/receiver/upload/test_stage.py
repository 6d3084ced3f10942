"""The stage in-process: tar streams built in memory, fed as the fd of a pipe or a temp file."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import random
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dittohead.core.errors import (
    DittoheadError,
    LimitExceeded,
    NameRejected,
    OutOfSpace,
    TransferError,
    UploadRejected,
)
from dittohead.receiver import fsops
from dittohead.receiver.config.checked import UploadLimits
from dittohead.receiver.dropbox import entry_name
from dittohead.receiver.upload import stage as stage_mod
from dittohead.receiver.upload.stage import Staged, Staging
from dittohead.receiver.upload.tarread import BUFFER_BYTES
from tests.hostile import streams as ts
from tests.support.server import upload_limits

LIMITS = upload_limits(max_files=1000, max_file_bytes=16 << 20, max_upload_bytes=64 << 20)


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    path = tmp_path / "inbox"
    path.mkdir()
    os.chmod(path, 0o3773)
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
    yield path, fd
    os.close(fd)


def _feed_pipe(data: bytes, chunk: int | None, hold: float = 0.0) -> tuple[int, threading.Thread]:
    read_fd, write_fd = os.pipe()

    def writer() -> None:
        rng = random.Random(len(data))
        view = memoryview(data)
        try:
            while view:
                size = chunk or rng.randint(1, 70_000)
                view = view[os.write(write_fd, view[:size]) :]
            time.sleep(hold)
        except BrokenPipeError:
            pass  # the reader gave up, as it should on a refusal
        finally:
            os.close(write_fd)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    return read_fd, thread


def receive(
    inbox_fd: int,
    data: bytes,
    *,
    limits: UploadLimits = LIMITS,
    via: str = "pipe",
    chunk: int | None = None,
    bufsize: int = BUFFER_BYTES,
    staging: list[Staging] | None = None,
) -> Staged:
    """Stage `data` read from a pipe (written by a thread in `chunk`-sized pieces) or a file."""
    st = Staging(inbox_fd, ts.SOURCE, limits)
    if staging is not None:
        staging.append(st)
    if via == "file":
        fd = os.memfd_create("upload")
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        thread = None
    else:
        fd, thread = _feed_pipe(data, chunk)
    try:
        return st.receive(fd, bufsize=bufsize)
    except BaseException:
        st.discard()
        raise
    finally:
        os.close(fd)
        if thread is not None:
            thread.join(5)
        st.close()


def python_tar(
    files: dict[str, bytes], *, fmt: int = tarfile.PAX_FORMAT, dirs: tuple[str, ...] = ()
) -> bytes:
    """An upload written by the stdlib tarfile (stream mode), manifest last."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=fmt) as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o7777
            tar.addfile(info)
        for name, data in [*files.items(), (ts.MANIFEST, ts.manifest_json(list(files.items())))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o4777  # set-id and world-writable: must be ignored
            info.mtime = time.time() + 1e9  # a float from the future: a pax header per member
            info.uid, info.gid, info.uname, info.gname = 0, 0, "root", "root"
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


SAMPLE = {
    "eprime/s01.txt": b"subject 1\n",
    "eprime/empty.txt": b"",
    "biopac/" + "long-name-" * 15 + ".acq": os.urandom(3 * 1024 * 1024 + 17),
    "ünïcødé/日本語.txt": b"data",
    "deep/" + "/".join(f"d{i}" for i in range(30)) + "/leaf.bin": b"\0" * 513,
}


def check_entry(inbox_path: Path, staged: Staged, files: dict[str, bytes]) -> None:
    entry = inbox_path / f".{staged.entry}"
    found = {}
    for dirpath, dirnames, filenames in os.walk(entry):
        for name in dirnames:
            assert os.stat(Path(dirpath, name)).st_mode & 0o7777 == 0o2770
        for name in filenames:
            path = Path(dirpath, name)
            assert path.stat().st_mode & 0o7777 == 0o640
            found[str(path.relative_to(entry))] = path.read_bytes()
    assert entry.stat().st_mode & 0o7777 == 0o2770
    manifest = found.pop(ts.MANIFEST)
    assert found == files
    assert hashlib.sha256(manifest).hexdigest() == staged.manifest_sha256
    assert staged.files == len(files)
    assert staged.bytes == sum(len(v) for v in files.values())


@pytest.mark.parametrize(
    ("via", "chunk", "bufsize"),
    [("file", None, BUFFER_BYTES), ("pipe", None, 4096), ("pipe", 1, 1024),
     ("pipe", 511, 512), ("pipe", 70001, 65536)],
)  # fmt: skip
def test_python_pax_upload_is_staged_exactly(
    inbox: tuple[Path, int], via: str, chunk: int | None, bufsize: int
) -> None:
    path, fd = inbox
    files = SAMPLE if chunk != 1 else {k: v[:5000] for k, v in SAMPLE.items()}
    staged = receive(
        fd, python_tar(files, dirs=("emptydir",)), via=via, chunk=chunk, bufsize=bufsize
    )
    check_entry(path, staged, files)
    assert (path / f".{staged.entry}" / "emptydir").is_dir()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_gnu_longnames_and_ustar_prefixes_are_applied(inbox: tuple[Path, int], fmt: int) -> None:
    path, fd = inbox
    # 150 bytes: a GNU 'L' long name, or a ustar prefix/name split
    files = {"p" * 60 + "/" + "q" * 89 + ".txt": b"long", "short.txt": b"s"}
    staged = receive(fd, python_tar(files, fmt=fmt), via="file")
    check_entry(path, staged, files)


def test_pax_global_and_local_records(inbox: tuple[Path, int]) -> None:
    path, fd = inbox
    body = (
        ts.pax([("comment", "global"), ("path", "ignored-by-local")], glob=True)
        + ts.pax([("path", "renamed.txt"), ("size", "3")])
        + ts.header("header-name.txt", size=999)
        + ts.pad(b"abc")
        # an empty value deletes the global path again: the header's own name counts
        + ts.pax([("path", "")])
        + ts.member("./own.txt", b"own")
        # and an empty global value deletes it for everything after
        + ts.pax([("path", "")], glob=True)
        + ts.folder("dir/")
        + ts.folder(".dittohead/")
    )
    files = {"renamed.txt": b"abc", "own.txt": b"own"}
    staged = receive(fd, ts.with_manifest(body, list(files.items())), via="file")
    check_entry(path, staged, files)


def test_upload_of_only_a_manifest_is_accepted(inbox: tuple[Path, int]) -> None:
    path, fd = inbox
    staged = receive(fd, ts.upload([]))
    check_entry(path, staged, {})


def test_trailing_nul_up_to_the_cap_is_accepted(inbox: tuple[Path, int]) -> None:
    path, fd = inbox
    staged = receive(fd, ts.upload([("a", b"a")], trailer=bytes(1024 * 1024)), via="file")
    check_entry(path, staged, {"a": b"a"})


def test_many_folders_do_not_leak_descriptors(inbox: tuple[Path, int]) -> None:
    path, fd = inbox
    files = {f"f{i % 97}/g{i % 13}/h{i}.txt": b"%d" % i for i in range(400)}
    before = len(os.listdir("/proc/self/fd"))
    staged = receive(fd, python_tar(files), via="file")
    check_entry(path, staged, files)
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize(
    ("body", "error", "fragment"),
    [
        (ts.header("l", kind=b"2", linkname="/etc"), UploadRejected, "symbolic link"),
        (ts.member("../x", b"x"), NameRejected, "'..'"),
        (ts.member(".dittohead/x", b"x"), NameRejected, "may only hold"),
        (ts.member("big", b"x" * 70), LimitExceeded, "max_file_bytes"),
        (b"".join(ts.member(f"f{i}", b"1") for i in range(4)), LimitExceeded, "max_files"),
        (b"".join(ts.member(f"f{i}", b"1" * 60) for i in range(3)), LimitExceeded, "max_upload"),
        (ts.pax([("path", "a"), ("path", "b")]) + ts.member("x"), UploadRejected, "twice"),
        (ts.longname("a") + ts.pax([("path", "b")]) + ts.member("x"), UploadRejected, "both"),
        (ts.longname("a") + ts.longname("b") + ts.member("x"), UploadRejected, "long names"),
        (
            ts.pax([("path", "a")]) + ts.pax([("path", "b")]) + ts.member("x"),
            UploadRejected,
            "two pax headers",
        ),
    ],
)
def test_refusals_remove_the_staging_entry(
    inbox: tuple[Path, int], body: bytes, error: type[DittoheadError], fragment: str
) -> None:
    path, fd = inbox
    limits = upload_limits(max_files=3, max_file_bytes=64, max_upload_bytes=150)
    with pytest.raises(error, match=fragment):
        receive(fd, ts.with_manifest(body, [("x.txt", b"x")]), limits=limits)
    assert os.listdir(path) == []


def test_size_cap_is_checked_before_any_data_is_read(inbox: tuple[Path, int]) -> None:
    """Only the header arrives and the pipe stays open: reading data would stall instead."""
    path, fd = inbox
    read_fd, write_fd = os.pipe()
    os.write(write_fd, ts.header("big.bin", size=1 << 30))
    st = Staging(fd, ts.SOURCE, upload_limits(max_file_bytes=1 << 20, stall_timeout=5))
    started = time.monotonic()
    try:
        with pytest.raises(LimitExceeded, match="max_file_bytes"):
            st.receive(read_fd)
    finally:
        st.discard()
        os.close(read_fd)
        os.close(write_fd)
    assert time.monotonic() - started < 2
    assert os.listdir(path) == []


def test_a_stalled_client_is_cut_off(inbox: tuple[Path, int]) -> None:
    path, fd = inbox
    read_fd, write_fd = os.pipe()
    os.write(write_fd, ts.member("a.txt", b"x" * 1000)[:700])
    st = Staging(fd, ts.SOURCE, upload_limits(stall_timeout=0.3))
    try:
        with pytest.raises(TransferError, match=r"no data arrived for 0\.3 seconds"):
            st.receive(read_fd)
        assert os.listdir(path) == [st.dot_entry]  # still there until the catch site discards
    finally:
        st.discard()
        os.close(read_fd)
        os.close(write_fd)
    assert os.listdir(path) == []


def test_free_space_is_watched_while_writing(
    inbox: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, fd = inbox
    monkeypatch.setattr(stage_mod, "SPACE_CHECK_BYTES", 1000)
    limits = upload_limits(min_free_bytes=1 << 62)  # no file system has that much left
    with pytest.raises(OutOfSpace, match="out of space"):
        receive(fd, ts.upload([("a", b"a" * 600), ("b", b"b" * 600)]), limits=limits)
    assert os.listdir(path) == []


def test_discard_removes_nested_content_but_nothing_outside(inbox: tuple[Path, int]) -> None:
    path, fd = inbox
    (path / "neighbour").mkdir()
    kept: list[Staging] = []
    body = ts.member("a/b/c/d.txt", b"data") + ts.member("a/x", b"y") + ts.header("e/f", kind=b"6")
    with pytest.raises(UploadRejected, match="FIFO"):
        receive(fd, ts.with_manifest(body), staging=kept)
    assert os.listdir(path) == ["neighbour"]
    kept[0].discard()  # a second discard is harmless


def test_committed_entries_are_never_discarded(inbox: tuple[Path, int]) -> None:
    path, fd = inbox
    kept: list[Staging] = []
    receive(fd, ts.upload([("a", b"a")]), staging=kept)
    kept[0].committed = True
    kept[0].discard()
    assert os.listdir(path) == [kept[0].dot_entry]


def test_entry_names_are_sortable_and_unguessable() -> None:
    first = entry_name("brogden-a", now=0)
    assert first.startswith("brogden-a-19700101T000000Z-")
    assert len(first.rsplit("-", 1)[1]) == 16
    assert first != entry_name("brogden-a", now=0)


def test_large_files_are_handed_to_writeback_while_they_arrive(
    inbox: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, fd = inbox
    calls: list[tuple[int, int, bool]] = []
    real = fsops.start_writeback

    def record(out: int, offset: int, count: int, *, wait: bool = False) -> bool:
        calls.append((offset, count, wait))
        return real(out, offset, count, wait=wait)

    monkeypatch.setattr(fsops, "start_writeback", record)
    monkeypatch.setattr(stage_mod, "WRITEBACK_BYTES", 64 * 1024)
    monkeypatch.setattr(stage_mod, "WRITEBACK_TAIL_BYTES", 4096)
    files = {"big.bin": os.urandom(200 * 1024 + 5), "mid.bin": b"m" * 5000, "small": b"s"}
    staged = receive(fd, ts.upload(list(files.items())), via="file", bufsize=16 * 1024)
    check_entry(path, staged, files)
    # big.bin in contiguous steps of at least 64 KiB, each after the first waiting for an
    # earlier range first; mid.bin only its tail at the close; small: nothing (left to the
    # commit's syncfs).
    step = 64 * 1024
    started = [(offset, count) for offset, count, wait in calls if not wait]
    waited = [(offset, count) for offset, count, wait in calls if wait]
    big, mid = started[:-1], started[-1]
    assert mid == (0, 5000)
    assert [offset for offset, _ in big] == [sum(c for _, c in big[:i]) for i in range(len(big))]
    assert sum(count for _, count in big) == len(files["big.bin"])
    assert all(count >= step for _, count in big[:-1]) and len(big) >= 3
    assert len(waited) == len(big) - 1
    for (offset, count), (later, _) in zip(waited, big[1:], strict=True):
        assert count == step and offset + step <= later


def test_writeback_is_not_asked_for_again_where_it_is_refused(
    inbox: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, fd = inbox
    calls: list[int] = []

    def refuse(out: int, offset: int, count: int, *, wait: bool = False) -> bool:
        calls.append(offset)
        return False  # as on a file system without sync_file_range

    monkeypatch.setattr(fsops, "start_writeback", refuse)
    monkeypatch.setattr(stage_mod, "WRITEBACK_BYTES", 4096)
    monkeypatch.setattr(stage_mod, "WRITEBACK_TAIL_BYTES", 4096)
    files = {"a.bin": os.urandom(50_000), "b.bin": os.urandom(50_000), "c": b"c" * 5000}
    staged = receive(fd, ts.upload(list(files.items())), via="file", bufsize=16 * 1024)
    check_entry(path, staged, files)
    assert calls == [0]


def test_start_writeback_on_a_file_and_on_a_pipe(tmp_path: Path) -> None:
    with open(tmp_path / "f", "wb") as f:
        f.write(b"x" * 100_000)
        f.flush()
        assert fsops.start_writeback(f.fileno(), 0, 100_000)
        assert fsops.start_writeback(f.fileno(), 4096, 4096, wait=True)
    read_fd, write_fd = os.pipe()
    try:
        assert not fsops.start_writeback(write_fd, 0, 10)  # ESPIPE: not a file
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_many_small_files_start_a_background_syncfs(
    inbox: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, fd = inbox
    synced: list[int] = []
    real = fsops.syncfs

    def record(target: int) -> None:
        synced.append(target)
        real(target)

    monkeypatch.setattr(fsops, "syncfs", record)
    monkeypatch.setattr(stage_mod, "SYNC_AHEAD_FILES", 4)
    monkeypatch.setattr(stage_mod, "WRITEBACK_TAIL_BYTES", 4096)
    files = {f"t/{i:02d}.txt": os.urandom(100 + i) for i in range(10)}
    files["big.bin"] = os.urandom(5000)  # not small: never counted
    staged = receive(fd, ts.upload(list(files.items())))
    check_entry(path, staged, files)
    assert len(synced) in (1, 2)  # after files 4 and 8: the second only if the first had ended
    assert not any(t.name == "dittohead-syncfs" for t in threading.enumerate())


def test_an_error_of_the_background_syncfs_fails_the_upload(
    inbox: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stands in for a disk that fails while writing back (EIO cannot be produced on demand).
    path, fd = inbox

    def failing(target: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fsops, "syncfs", failing)
    monkeypatch.setattr(stage_mod, "SYNC_AHEAD_FILES", 2)
    files = {f"{i}.txt": b"x" for i in range(3)}
    with pytest.raises(OSError) as caught:
        receive(fd, ts.upload(list(files.items())))
    assert caught.value.errno == errno.EIO
    assert os.listdir(path) == []  # nothing half-written stays


def test_the_pipe_from_sshd_is_grown_and_a_file_is_read_as_it_is(
    inbox: tuple[Path, int], tmp_path: Path
) -> None:
    path, fd = inbox
    files = {"a.txt": b"a" * 3000}
    read_fd, thread = _feed_pipe(ts.upload(list(files.items())), None)
    st = Staging(fd, ts.SOURCE, LIMITS)
    try:
        staged = st.receive(read_fd)
        assert fcntl.fcntl(read_fd, fcntl.F_GETPIPE_SZ) == stage_mod.PIPE_BYTES
    finally:
        os.close(read_fd)
        thread.join(5)
        st.close()
    check_entry(path, staged, files)
    with (tmp_path / "plain").open("wb") as plain:
        assert fsops.grow_pipe(plain.fileno(), stage_mod.PIPE_BYTES) is None  # not a pipe
