"""The short cuts of the name policy decide exactly like the rules they skip: `check_path`'s
fast path (one regular expression for plain ASCII names) like `check_path_by_rules` (the same
names accepted, returned unchanged, every refusal worded by the rules); `fold`'s ASCII case
like the Unicode formula; `NameSet`, which remembers its folders, like claiming every parent
every time."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dittohead.core.errors import NameRejected
from dittohead.core.names import (
    _FAST_USER_PATH,
    MAX_COMPONENT_BYTES,
    MAX_DEPTH,
    MAX_PATH_BYTES,
    NameSet,
    check_path,
    check_path_by_rules,
    fold,
    parents,
)


def outcome(check: object, name: str, allow_reserved: bool) -> tuple[str, str]:
    assert callable(check)
    try:
        return "accepted", check(name, allow_reserved=allow_reserved)
    except NameRejected as exc:
        return "refused", exc.message


def assert_same(name: str) -> None:
    for allow in (False, True):
        assert outcome(check_path, name, allow) == outcome(check_path_by_rules, name, allow), name


# Characters where the rules draw a line: every printable ASCII one, the separators and
# Windows' forbidden ones, controls (C0, DEL, C1), a lone surrogate, letters that case-fold to
# ASCII (Kelvin sign, long s, dotted I), superscript digits (device names on Windows), accents.
TRICKY = (
    "".join(chr(c) for c in range(0x20, 0x7F))
    + "\x00\x01\x1f\x7f\x80\x85\x9f\udcff\u212a\u017f\u0130\u00b9\u00b2\u00b3\u00e9\u00a0"
)
DEVICES = ("CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "COM", "LPT")


@st.composite
def device_like(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from(DEVICES))
    if base in ("COM", "LPT"):
        base += draw(st.sampled_from("0123456789\u00b9\u00b2\u00b3x"))
    base = "".join(c.lower() if draw(st.booleans()) else c for c in base)
    tail = draw(st.sampled_from(["", ".", ".txt", "x", " ", ". ", "..log", "$", "1"]))
    return base + tail


@st.composite
def long_component(draw: st.DrawFn) -> str:
    size = draw(st.integers(MAX_COMPONENT_BYTES - 2, MAX_COMPONENT_BYTES + 1))
    char = draw(st.sampled_from(["a", ".", " ", "\u00e9", "_"]))
    end = draw(st.sampled_from(["", "a", ".", " "]))
    return (char * size)[: size - len(end)] + end


component = st.one_of(
    st.text(alphabet=TRICKY, min_size=0, max_size=8),
    st.text(alphabet="aZ09._- ", min_size=0, max_size=5),
    st.sampled_from(["", ".", "..", "...", ".dittohead", ".DittoHead", ".dittoheadx", "a b"]),
    device_like(),
    long_component(),
)


@st.composite
def path(draw: st.DrawFn) -> str:
    parts = draw(st.lists(component, min_size=1, max_size=6))
    if draw(st.integers(0, 9)) == 0:  # deep: near MAX_DEPTH components
        parts = parts + ["d"] * draw(st.integers(MAX_DEPTH - 7, MAX_DEPTH))
    prefix = draw(st.sampled_from(["", "", "", "./", "/", "././"]))
    return prefix + "/".join(parts)


@settings(max_examples=3000)
@given(path())
@example("eprime/s01.txt")
@example("./eprime/s01.txt")
@example(".dittohead/manifest.json")
@example("\u212a.txt")  # Kelvin sign: folds to "k", must not be taken for ASCII
@example("COM\u00b9.txt")
@example("conin$.x")
@example("CONOUT$")
def test_fast_path_decides_like_the_rules(name: str) -> None:
    assert_same(name)


@pytest.mark.parametrize("length", [MAX_PATH_BYTES - 1, MAX_PATH_BYTES, MAX_PATH_BYTES + 1])
@pytest.mark.parametrize("last", ["a", ".", " "])
def test_fast_path_agrees_at_the_length_limit(length: int, last: str) -> None:
    name = "/".join(["x" * 200] * 6)[: length - 1] + last
    assert len(name) == length
    assert_same(name)


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1])
def test_fast_path_agrees_at_the_depth_limit(depth: int) -> None:
    assert_same("/".join(["d"] * depth))


def test_every_character_alone_and_inside_a_name() -> None:
    for code in range(0x0, 0x3000):
        ch = chr(code)
        for name in (ch, f"a{ch}", f"{ch}a", f"a{ch}b", f"a/{ch}/b", f"{ch}{ch}"):
            assert_same(name)


def test_ordinary_names_take_the_fast_path() -> None:
    # The point of it: what instruments write (E-Prime, eye trackers, BIOPAC) is matched by
    # the expression alone.
    for name in ("sub1/ses2/task3/trial00042.txt", "eprime/S01-run_2 (copy).edat2", "a/.hidden"):
        assert _FAST_USER_PATH.fullmatch(name)
        assert check_path(name) == name


def fold_by_rules(name: str) -> str:
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


@given(st.text(alphabet=TRICKY + "\u00df\u1e9e\u0301\u00c9", max_size=12))
def test_fold_takes_a_short_cut_only_where_it_changes_nothing(name: str) -> None:
    assert fold(name) == fold_by_rules(name)


class ReferenceNameSet:
    """NameSet as it was before it remembered its folders: every parent claimed every time."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, bool, bool]] = {}

    def _claim(self, path: str, is_dir: bool, explicit: bool) -> None:
        key = fold_by_rules(path)
        old = self._seen.get(key)
        if old is None:
            self._seen[key] = (path, is_dir, explicit)
            return
        spelling, old_is_dir, old_explicit = old
        if spelling != path:
            raise NameRejected(
                f"{path!r} is not an allowed name: it would be the same file as {spelling!r} "
                "on Windows (case or accents)"
            )
        if old_is_dir != is_dir:
            raise NameRejected(
                f"{path!r} is not an allowed name: it is used both as a file and as a folder"
            )
        if not is_dir or (explicit and old_explicit):
            raise NameRejected(f"{path!r} is not an allowed name: it appears twice in the upload")
        if explicit:
            self._seen[key] = (path, True, True)

    def add_file(self, path: str) -> None:
        for parent in parents(path):
            self._claim(parent, True, False)
        self._claim(path, False, True)

    def add_dir(self, path: str) -> None:
        for parent in parents(path):
            self._claim(parent, True, False)
        self._claim(path, True, True)


def _added(names: NameSet | ReferenceNameSet, path: str, is_dir: bool) -> str:
    try:
        (names.add_dir if is_dir else names.add_file)(path)
    except NameRejected as exc:
        return exc.message
    return "ok"


set_paths = st.lists(
    st.sampled_from(["a", "A", "b", "\u00e9", "e\u0301", "x.txt", "X.TXT"]), min_size=1, max_size=4
).map("/".join)


@settings(max_examples=1000)
@given(st.lists(st.tuples(set_paths, st.booleans()), max_size=25))
def test_name_set_refuses_exactly_what_it_refused_before(ops: list[tuple[str, bool]]) -> None:
    new, old = NameSet(), ReferenceNameSet()
    for path, is_dir in ops:
        assert _added(new, path, is_dir) == _added(old, path, is_dir), (path, is_dir)
