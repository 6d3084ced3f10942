"""FileItem and Plan are records (frozen dataclasses): equal, hashed and shown by their fields."""

from __future__ import annotations

import os

from dittohead.client.pack import iter_stream
from dittohead.client.plan.scan import FileItem, Plan


def test_file_item_is_a_value() -> None:
    item = FileItem("eprime/s01.txt", 10, 1_700_000_000_123_456_789)
    same = FileItem("eprime/s01.txt", 10, 1_700_000_000_123_456_789)
    assert item == same and hash(item) == hash(same)
    assert len({item, same}) == 1
    for other in (
        FileItem("eprime/s02.txt", 10, 1_700_000_000_123_456_789),
        FileItem("eprime/s01.txt", 11, 1_700_000_000_123_456_789),
        FileItem("eprime/s01.txt", 10, 1),
    ):
        assert item != other
    as_tuple: object = ("eprime/s01.txt", 10, 1_700_000_000_123_456_789)
    assert item != as_tuple
    assert repr(item) == ("FileItem(path='eprime/s01.txt', size=10, mtime_ns=1700000000123456789)")
    assert not hasattr(item, "__dict__")  # slots: no per-instance dict


def test_plan_is_a_value() -> None:
    files = (FileItem("a/b.txt", 3, 5),)
    plan = Plan("/pc", files, ("a", "e"), ("e",))
    assert plan == Plan("/pc", files, ("a", "e"), ("e",))
    assert hash(plan) == hash(Plan("/pc", files, ("a", "e"), ("e",)))
    assert plan != Plan("/pc", files, ("a", "e"))
    assert Plan("/pc", files, ("a",)).empty_dirs == ()
    assert plan.total_bytes == 3
    assert repr(plan) == (
        "Plan(root='/pc', files=(FileItem(path='a/b.txt', size=3, mtime_ns=5),), "
        "dirs=('a', 'e'), empty_dirs=('e',))"
    )


def test_with_files_and_with_root_keep_the_rest() -> None:
    files = (FileItem("a/b.txt", 3, 5), FileItem("c.txt", 1, 2))
    plan = Plan("/pc", files, ("a",), ())
    assert plan.with_files(files[1:]) == Plan("/pc", files[1:], ("a",), ())
    assert plan.with_root("/elsewhere") == Plan("/elsewhere", files, ("a",), ())
    assert plan.root == "/pc"  # unchanged: each gives a new plan


def test_iter_stream_reads_from_the_root_given() -> None:
    plan = Plan("/pc", (FileItem("a.txt", 3, 5),), ())
    assert iter_stream(plan, "relative/dir").plan.root == os.path.abspath("relative/dir")
