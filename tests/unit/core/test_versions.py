"""Version naming, and the property that no sequence of arrivals overwrites or loses one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dittohead.core.names import MAX_COMPONENT_BYTES
from dittohead.core.versions import split_ext, version_name


@pytest.mark.parametrize(
    ("path", "n", "name"),
    [
        ("eprime/s01.txt", 1, "eprime/s01.txt"),
        ("eprime/s01.txt", 2, "eprime/s01~2.txt"),
        ("a.tar.gz", 2, "a.tar~2.gz"),
        ("noext", 3, "noext~3"),
        (".bashrc", 2, ".bashrc~2"),
        (".hidden.txt", 2, ".hidden~2.txt"),
        ("dir.d/file", 2, "dir.d/file~2"),
        ("..odd", 2, "..odd~2"),
    ],
)
def test_names(path: str, n: int, name: str) -> None:
    assert version_name(path, n) == name


def test_split_ext() -> None:
    assert split_ext("a.tar.gz") == ("a.tar", ".gz")
    assert split_ext(".profile") == (".profile", "")


names = st.from_regex(r"[a-zA-Z0-9 ._-]{1,40}", fullmatch=True).filter(lambda s: s.strip("."))


@given(names, st.integers(1, 10_000), st.integers(1, 10_000))
def test_distinct_numbers_give_distinct_names(name: str, a: int, b: int) -> None:
    assert (version_name(name, a) == version_name(name, b)) == (a == b)


@given(st.text(min_size=1, max_size=300).filter(lambda s: "/" not in s), st.integers(2, 10**6))
def test_names_stay_within_the_component_limit(name: str, n: int) -> None:
    name = name.encode("utf-8", "ignore")[:MAX_COMPONENT_BYTES].decode("utf-8", "ignore") or "x"
    assert len(version_name(name, n).encode()) <= MAX_COMPONENT_BYTES
    assert version_name(name, n) == version_name(name, n)  # deterministic


@given(st.lists(st.tuples(st.sampled_from(["a.txt", "a~2.txt", "b"]), st.integers(0, 3))))
def test_no_sequence_of_arrivals_overwrites_or_loses_a_version(
    arrivals: list[tuple[str, int]],
) -> None:
    """A model of the publish rule: first free name, same content → duplicate."""
    tree: dict[str, int] = {}  # stored name -> content
    versions: dict[str, dict[int, str]] = {}  # path -> content -> stored name
    for path, content in arrivals:
        known = versions.setdefault(path, {})
        if content in known:
            continue
        n = 1
        while version_name(path, n) in tree:
            n += 1
        name = version_name(path, n)
        assert name not in tree  # never overwrite
        tree[name] = content
        known[content] = name
    for known in versions.values():
        for content, name in known.items():
            assert tree[name] == content  # never lose
