"""The stream order of a pack: the folders merged into the files `scan` already gave in order
must be exactly the order sorting every member by `path_key` gives (what `members` did before),
and a plan whose files are not in that order is sorted as a whole."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from dittohead.client.pack import Member, members
from dittohead.client.plan.scan import FileItem, Plan, path_key
from dittohead.core.names import parents


def _by_sorting_everything(plan: Plan) -> list[Member]:
    """The previous `members`: every folder and file, sorted by path_key."""
    dirs = {f.path.rpartition("/")[0] for f in plan.files}
    dirs.discard("")
    dirs.update(plan.empty_dirs)
    for d in list(dirs):
        dirs.update(parents(d))
    out: list[Member] = [*dirs, *plan.files]
    out.sort(key=lambda m: path_key(m if isinstance(m, str) else m.path))
    return out


# Names around "/" in sort order: " ", "-" and "." sort before "/", "0" and "a" after, so a
# folder "a" and files "a.txt", "a-b", "a b" interleave differently by path_key than by text.
_PART = st.sampled_from(["a", "a.txt", "a-b", "a b", "b", "a0", "A", "é"])
_PATHS = st.lists(st.lists(_PART, min_size=1, max_size=4).map("/".join), max_size=30)


def _plan(paths: list[str], empty: list[str], shuffle: int | None) -> Plan:
    # A file cannot also be a folder holding others: keep the first of each such clash.
    files: list[str] = []
    for p in paths:
        if p in files or any(f.startswith(p + "/") or p.startswith(f + "/") for f in files):
            continue
        files.append(p)
    files.sort(key=path_key)
    if shuffle is not None:
        random.Random(shuffle).shuffle(files)
    empty_dirs = tuple(d for d in empty if not any(f == d or d.startswith(f + "/") for f in files))
    items = tuple(FileItem(p, len(p), 0) for p in files)
    return Plan("/nowhere", items, (), empty_dirs)


@given(_PATHS, _PATHS, st.none() | st.integers(0, 1000))
def test_members_are_in_path_key_order(
    paths: list[str], empty: list[str], shuffle: int | None
) -> None:
    plan = _plan(paths, empty, shuffle)
    got = members(plan)
    assert got == _by_sorting_everything(plan)
    assert sum(isinstance(m, FileItem) for m in got) == len(plan.files)


def test_a_folder_comes_before_its_contents_and_after_earlier_siblings() -> None:
    plan = _plan(["a.txt", "a/x", "a b/y", "b"], [], None)
    names = [m if isinstance(m, str) else m.path for m in members(plan)]
    assert names == ["a", "a/x", "a b", "a b/y", "a.txt", "b"]
