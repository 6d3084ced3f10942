"""The stage's short cuts decide exactly like the code they skip: a member's name (the header's
name field and ustar prefix, read inline) as `_text` reads them; `Staging._check_name`'s one
match (`PLAIN_USER_PATH`) like `check_path` followed by the reserved-folder rule; a small
file's single ``os.write`` finished like `fsops.write_all` when the kernel takes less; the
folder fds, with the last one remembered, those of their folders."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dittohead.core.errors import NameRejected
from dittohead.core.manifest import MANIFEST_DIR, MANIFEST_PATH
from dittohead.core.names import MAX_DEPTH, RESERVED_TOP, check_path, fold
from dittohead.receiver.upload.stage import DIR_FD_CACHE, Staging, _Dirs
from dittohead.receiver.upload.tarread import Member, Stream, TarReader, _text
from tests.hostile import streams as ts
from tests.support.server import upload_limits
from tests.unit.core.test_names_fast_path import path
from tests.unit.receiver.upload.test_stage import LIMITS, inbox, receive  # noqa: F401 (a fixture)


def check_name_by_rules(member: Member) -> str:
    """`Staging._check_name` as it was before its fast path."""
    name = member.name
    if member.is_dir and name.endswith("/"):
        name = name[:-1]
    name = check_path(name, allow_reserved=True)
    if fold(name.split("/", 1)[0]) == fold(RESERVED_TOP):
        wanted = MANIFEST_DIR if member.is_dir else MANIFEST_PATH
        if name != wanted:
            raise NameRejected(
                f"{name!r} is not allowed: the folder {RESERVED_TOP!r} may only hold "
                f"{MANIFEST_PATH!r}"
            )
    return name


def _outcome(check: object, member: Member) -> tuple[str, str]:
    assert callable(check)
    try:
        return "accepted", check(member)
    except NameRejected as exc:
        return "refused", exc.message


@settings(max_examples=2000)
@given(path(), st.booleans(), st.sampled_from(["", "", "/", "//"]))
@example(".dittohead/manifest.json", False, "")
@example(".DittoHead/manifest.json", False, "")
@example(".dittohead", True, "/")
@example(".dittohead/x", False, "")
@example(".dittoheadx/y", False, "")
@example("a/.dittohead", False, "")
@example("\u212a.txt", False, "")
@example("x" * 1025, False, "")
def test_check_name_decides_like_the_rules(name: str, is_dir: bool, tail: str) -> None:
    staging = Staging(-1, ts.SOURCE, upload_limits())
    member = Member(name + tail, is_dir, 0)
    assert _outcome(staging._check_name, member) == _outcome(check_name_by_rules, member)


# Names that the short cuts meet again and again: a few parents (plain or not, near the depth
# limit, long), each with a last component from a list of plain and refused ones.
_PARENTS = ["", "a", "a/b", "A/b", "a/CON", ".dittohead", ".DittoHead/x", "x./y", "\u00e9"]
_PARENTS += ["/".join(["d"] * (MAX_DEPTH - n)) for n in (3, 2, 1, 0)] + ["/".join(["y" * 250] * 4)]
_PARTS = ["a", "b", "B", "x.txt", "CON", "con.txt", "lpt1", ".dittohead", ".DittoHead", "x."]
_PARTS += ["x ", "\u00e9", "", ".", "..", "k" * 255, "k" * 256, "a\\b", "a:b", "c/d"]
_PARTS += ["manifest.json", "json"]
related_name = st.tuples(st.sampled_from(_PARENTS), st.sampled_from(_PARTS)).map(
    lambda t: f"{t[0]}/{t[1]}" if t[0] else t[1]
)


@settings(max_examples=500)
@given(st.lists(st.tuples(related_name, st.booleans()), min_size=1, max_size=40))
def test_check_name_decides_like_the_rules_after_any_names(ops: list[tuple[str, bool]]) -> None:
    # `_check_name` remembers the parents of plain names: whatever came before, each name is
    # decided as the rules decide it.
    staging = Staging(-1, ts.SOURCE, upload_limits())
    for name, is_dir in ops:
        member = Member(name, is_dir, 0)
        assert _outcome(staging._check_name, member) == _outcome(check_name_by_rules, member)


name_field = st.one_of(
    st.binary(max_size=100),
    st.text(alphabet="ab/é\0", max_size=40).map(lambda t: t.encode()[:100]),
)


@given(
    name_field, name_field.map(lambda b: b[:155]), st.sampled_from([ts.POSIX_MAGIC, ts.GNU_MAGIC])
)
@example(b"n.txt", b"pre/fix", ts.POSIX_MAGIC)
@example(b"n.txt", b"\0junk", ts.POSIX_MAGIC)
@example(b"n.txt", b"12345670123", ts.GNU_MAGIC)
@example(b"caf\xe9", b"d\xff", ts.POSIX_MAGIC)
def test_member_names_read_as_text_reads_them(name: bytes, prefix: bytes, magic: bytes) -> None:
    if not name.strip(b"\0") and not prefix.strip(b"\0"):
        name = b"x"  # an all-NUL header would be the end of the archive
    block = ts.header(name, prefix=prefix, magic=magic, kind=b"5")
    expected = _text(block[0:100])
    before = _text(block[345:500]) if magic == ts.POSIX_MAGIC else ""
    if before:
        expected = f"{before}/{expected}"
    fd = os.memfd_create("tar")
    try:
        os.write(fd, block)
        os.lseek(fd, 0, os.SEEK_SET)
        member = TarReader(Stream(fd, stall_timeout=5, bufsize=1024)).next_member()
    finally:
        os.close(fd)
    assert member == Member(expected, True, 0)


def test_short_writes_of_small_files_are_completed(
    inbox: tuple[Path, int],  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path_, fd = inbox
    files = [("a.txt", b"0123456789" * 50), ("b/c.bin", bytes(range(256)) * 3), ("e", b"")]
    real_write = os.write
    calls: list[int] = []

    def short_write(out: int, data: bytes | memoryview) -> int:
        if isinstance(data, memoryview):  # the stage's writes (not the test's own): the kernel
            calls.append(len(data))  # may take less than it is given
            data = data[:7]
        return real_write(out, data)

    monkeypatch.setattr(os, "write", short_write)
    staged = receive(fd, ts.upload(files), via="file")
    monkeypatch.undo()
    assert staged.files == 3
    for name, data in files:
        assert (path_ / f".{staged.entry}" / name).read_bytes() == data
    assert 0 not in calls  # an empty file is created, never written to
    assert len(calls) > 100  # the short writes were completed


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from("abcdefghij"), min_size=0, max_size=3).map("/".join),
        min_size=1,
        max_size=300,
    )
)
def test_folder_fds_are_those_of_their_folders(paths: list[str]) -> None:
    # The last folder is remembered beside the bounded LRU of open fds: whatever the order of
    # requests (and evictions: more folders than stage.DIR_FD_CACHE), each fd is its folder's.
    with tempfile.TemporaryDirectory() as tmp:
        root = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        dirs = _Dirs(root)
        try:
            for i, folder in enumerate(paths):
                # Every tenth request a fresh folder, to push the others out of the cache.
                asked = f"{folder}/n{i}".lstrip("/") if i % 10 == 9 else folder
                fd = dirs.open(asked)
                expected = os.stat(os.path.join(tmp, asked))
                got = os.fstat(fd)
                assert (got.st_dev, got.st_ino) == (expected.st_dev, expected.st_ino), asked
                assert len(dirs._fds) <= DIR_FD_CACHE
        finally:
            dirs.close()
            os.close(root)
