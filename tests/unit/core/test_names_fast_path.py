"""`check_path`'s fast path (one regular expression for plain ASCII names) decides exactly like
the rules it short-cuts (`check_path_by_rules`): the same names accepted, returned unchanged,
and every refusal worded by the rules."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dittohead.core.errors import NameRejected
from dittohead.core.names import (
    _FAST_PATH,
    MAX_COMPONENT_BYTES,
    MAX_DEPTH,
    MAX_PATH_BYTES,
    check_path,
    check_path_by_rules,
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
        assert _FAST_PATH.fullmatch(name)
        assert check_path(name) == name
