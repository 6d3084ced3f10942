"""Property: every name the path policy accepts stays beneath the staging root, read as a
POSIX path and as a Windows path (the data goes back and forth between both)."""

from __future__ import annotations

import ntpath
import posixpath
from pathlib import PurePosixPath, PureWindowsPath
from types import ModuleType

from hypothesis import example, given
from hypothesis import strategies as st

from dittohead.core.errors import NameRejected
from dittohead.core.names import check_path

ROOT_POSIX = "/srv/dittohead/study/inbox/.entry"
ROOT_WINDOWS = "C:\\dittohead\\entry"

_TRICKY = [
    *("..", ".", "", "a", "C:", "c:x", "\\", "\\\\srv\\share", "//", "~", "con", "NUL.txt"),
    *("a.", "a ", " ", "\x00", "é", "e\u0301", "..\\..", "?", "*", "x:y", "/", "./"),
]
component = st.one_of(st.sampled_from(_TRICKY), st.text(min_size=0, max_size=12))
names = st.one_of(
    st.lists(component, min_size=1, max_size=6).map("/".join),
    st.text(min_size=0, max_size=40),
)


def _beneath(root: str, joined: str, mod: ModuleType) -> bool:
    norm, base = mod.normpath(joined), mod.normpath(root)
    return bool(norm == base or norm.startswith(base + mod.sep))


@given(names)
@example("./a/b")
@example("..\\evil")
@example("C:/evil")
@example("//server/share/x")
def test_accepted_names_stay_beneath_the_root(name: str) -> None:
    try:
        checked = check_path(name)
    except NameRejected:
        return
    posix = PurePosixPath(ROOT_POSIX) / checked
    assert not PurePosixPath(checked).is_absolute()
    assert ".." not in PurePosixPath(checked).parts
    assert _beneath(ROOT_POSIX, str(posix), posixpath)

    windows = PureWindowsPath(ROOT_WINDOWS) / checked
    win_name = PureWindowsPath(checked)
    assert win_name.drive == "" and win_name.root == ""
    assert ".." not in win_name.parts
    assert (
        windows.parts[: len(PureWindowsPath(ROOT_WINDOWS).parts)]
        == PureWindowsPath(ROOT_WINDOWS).parts
    )
    assert _beneath(ROOT_WINDOWS, str(windows), ntpath)
