"""scan walks folders depth first in name order instead of sorting every path afterwards, and
adds names to the collision check as it goes; the result (files, folders, empty folders, and
every problem with its wording) must be exactly what the straightforward way gives: list
everything, sort by `path_key`, then check all names together in that order."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dittohead.client.plan.scan import FileItem, NamesRejected, Plan, path_key, scan
from dittohead.core.errors import NameRejected
from dittohead.core.names import NameSet, check_path, parents


def _reason(exc: NameRejected, name: str) -> str:
    prefix = f"{name!r} is not an allowed name: "
    return exc.message[len(prefix) :] if exc.message.startswith(prefix) else exc.message


def reference_scan(root: Path, things: list[str] | None = None) -> Plan:
    """The straightforward scan: walk, then sort, then check all names together."""
    files: list[FileItem] = []
    dirs: list[str] = []
    problems: list[tuple[str, str]] = []

    def ok(rel: str) -> bool:
        try:
            check_path(rel)
        except NameRejected as exc:
            problems.append((rel, _reason(exc, rel)))
            return False
        return True

    def walk(top: Path, top_rel: str) -> None:
        for entry in os.scandir(top):
            rel = f"{top_rel}/{entry.name}" if top_rel else entry.name
            if entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                if ok(rel):
                    dirs.append(rel)
                    walk(Path(entry.path), rel)
            elif entry.is_file(follow_symlinks=False) and ok(rel):
                st_ = entry.stat(follow_symlinks=False)
                files.append(FileItem(rel, st_.st_size, st_.st_mtime_ns))

    if things:
        for name in sorted(things):
            dirs.append(name)
            walk(root / name, name)
    else:
        walk(root, "")
    files.sort(key=lambda f: path_key(f.path))
    dirs.sort(key=path_key)
    names = NameSet()
    everything = [(d, True) for d in dirs] + [(f.path, False) for f in files]
    for rel, is_dir in sorted(everything, key=lambda item: path_key(item[0])):
        try:
            (names.add_dir if is_dir else names.add_file)(rel)
        except NameRejected as exc:
            problems.append((rel, _reason(exc, rel)))
    if problems:
        raise NamesRejected(sorted(problems, key=lambda p: path_key(p[0])))
    holding = {parent for f in files for parent in parents(f.path)}
    empty = tuple(d for d in dirs if d not in holding)
    return Plan(str(root), tuple(files), tuple(dirs), empty)


def outcome(root: Path, things: list[str] | None, how: object) -> object:
    assert callable(how)
    try:
        return how(root, things)
    except NamesRejected as exc:
        return ("refused", exc.problems, exc.message)


# Names whose sort order by path differs from plain string order ("a" < "a/b" < "a.txt" <
# "a0"), case and accent twins (one file on Windows), and names the policy refuses.
NAMES = ["a", "a.txt", "a0", "a b", "a-", "A", "b", "B.txt", "\u00e9", "e\u0301", "con", "x:y",
         "t.", "Data", "data", ".dittohead", "z"]  # fmt: skip


@st.composite
def trees(draw: st.DrawFn) -> dict[str, bool]:
    """Relative path → is a folder (files hold their own name as content)."""
    tree: dict[str, bool] = {}
    for _ in range(draw(st.integers(1, 14))):
        depth = draw(st.integers(1, 3))
        parts = [draw(st.sampled_from(NAMES)) for _ in range(depth)]
        prefix = ""
        for i, part in enumerate(parts):
            rel = f"{prefix}{part}"
            is_dir = i < len(parts) - 1 or (draw(st.booleans()) and draw(st.booleans()))
            if tree.setdefault(rel, is_dir) != is_dir:
                break  # already there as the other kind: stop this branch
            if not is_dir:
                break
            prefix = rel + "/"
    return tree


def build(root: Path, tree: dict[str, bool]) -> None:
    root.mkdir()
    for rel, is_dir in sorted(tree.items(), key=lambda item: path_key(item[0])):
        path = root / rel
        if is_dir:
            path.mkdir()
        else:
            path.write_text(rel)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(trees())
def test_scan_matches_the_straightforward_scan(
    tmp_path_factory: pytest.TempPathFactory, tree: dict[str, bool]
) -> None:
    root = tmp_path_factory.mktemp("tree") / "d"
    build(root, tree)
    assert outcome(root, None, lambda r, t: scan(r)) == outcome(root, None, reference_scan)
    top_dirs = sorted(rel for rel, is_dir in tree.items() if is_dir and "/" not in rel)
    good = [d for d in top_dirs if d not in ("con", "x:y", "t.", ".dittohead")]
    if good:
        things = good[: 1 + len(good) // 2]
        assert outcome(root, things, scan) == outcome(root, things, reference_scan)


def test_a_big_tree_comes_out_in_path_order(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for a in ("s", "s.1", "s-1", "S0"):
        for b in ("x", "x.y", "x0"):
            (root / a / b).mkdir(parents=True)
            for c in ("f", "f.txt", "f0", "F1"):
                (root / a / b / c).write_bytes(b"")
    (root / "s" / "empty").mkdir()
    assert scan(root) == reference_scan(root)
