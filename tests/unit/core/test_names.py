"""The one path policy shared by the client and the receiver."""

from __future__ import annotations

import posixpath
from pathlib import PurePosixPath, PureWindowsPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dittohead.core.errors import NameRejected
from dittohead.core.names import MAX_DEPTH, NameSet, check_path


@pytest.mark.parametrize(
    "name", ["eprime/s01.txt", "a", "./a/b.edat2", "Ünïcode/naïve.txt", ".hidden", "a/.dittohead/x"]
)
def test_ordinary_names_pass(name: str) -> None:
    assert check_path(name) == name.removeprefix("./")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("a/../../etc", "'..'"),
        ("a/./b", "'.'"),
        ("a//b", "empty path component"),
        ("a/", "empty path component"),
        ("a\x00b", "NUL"),
        ("a\nb", "control character"),
        ("a\x9bb", "control character"),
        ("a\\b", "backslash"),
        ("a:b", "':'"),
        ("what?.txt", "'?'"),
        ("CON", "reserved device name"),
        ("dir/nul.txt", "reserved device name"),
        ("COM1.log", "reserved device name"),
        ("trailing.", "ends with a dot or a space"),
        ("trailing ", "ends with a dot or a space"),
        ("x" * 256, "longer than 255 bytes"),
        ("/".join(["d"] * (MAX_DEPTH + 1)), "deeper than"),
        ("/".join(["d" * 200] * 6), "longer than 1024 bytes"),
        (".dittohead/manifest.json", "reserved for dittohead"),
        (".DittoHead/x", "reserved for dittohead"),
        ("bad\udcffname", "not valid UTF-8"),
    ],
)
def test_bad_names_are_refused_naming_the_rule(name: str, why: str) -> None:
    with pytest.raises(NameRejected) as info:
        check_path(name)
    assert why in info.value.message


def test_the_manifest_name_is_allowed_only_when_asked() -> None:
    assert check_path(".dittohead/manifest.json", allow_reserved=True)


@pytest.mark.parametrize(
    ("first", "second", "why"),
    [
        ("a.txt", "a.txt", "appears twice"),
        ("Data/a.txt", "data/b.txt", "same file as 'Data'"),
        ("A.TXT", "a.txt", "same file as"),
        ("caf\u00e9.txt", "cafe\u0301.txt", "same file as"),  # NFC vs NFD
        ("x", "x/y", "both as a file and as a folder"),
    ],
)
def test_name_sets_refuse_windows_collisions(first: str, second: str, why: str) -> None:
    names = NameSet()
    names.add_file(first)
    with pytest.raises(NameRejected) as info:
        names.add_file(second)
    assert why in info.value.message


def test_a_folder_may_be_listed_once_explicitly_and_implied_by_its_files() -> None:
    names = NameSet()
    names.add_dir("eprime")
    names.add_file("eprime/a.txt")
    names.add_file("eprime/b.txt")
    with pytest.raises(NameRejected):
        names.add_dir("eprime")


component = st.text(alphabet=st.characters(codec="utf-8", min_codepoint=1), min_size=1, max_size=12)


@given(st.lists(component, min_size=1, max_size=6).map("/".join))
def test_every_accepted_name_stays_beneath_the_root_on_posix_and_windows(name: str) -> None:
    try:
        accepted = check_path(name)
    except NameRejected:
        return
    root_posix = PurePosixPath("/staging/root")
    joined = posixpath.normpath(str(root_posix / accepted))
    assert joined.startswith("/staging/root/")
    windows = PureWindowsPath("C:/staging/root") / PureWindowsPath(accepted)
    assert windows.drive == "C:"
    assert windows.parts[:3] == ("C:\\", "staging", "root")
    assert ".." not in windows.parts
    assert len(windows.parts) == 3 + len(accepted.split("/"))
