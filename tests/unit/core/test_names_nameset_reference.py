"""NameSet stores a file's name bare (and shares the string with its folded key when they are
equal) to keep an upload's names small; it must decide, and word its refusals, exactly as the
straightforward set of (spelling, is_dir, explicit) tuples it replaced."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dittohead.core.errors import NameRejected
from dittohead.core.names import NameSet, _reject, fold, parents


class ReferenceNameSet:
    """The previous NameSet: one (spelling, is_dir, explicit) tuple per folded name."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, bool, bool]] = {}

    def _claim(self, path: str, is_dir: bool, explicit: bool) -> None:
        key = fold(path)
        old = self._seen.get(key)
        if old is None:
            self._seen[key] = (path, is_dir, explicit)
            return
        spelling, old_is_dir, old_explicit = old
        if spelling != path:
            raise _reject(
                path, f"it would be the same file as {spelling!r} on Windows (case or accents)"
            )
        if old_is_dir != is_dir:
            raise _reject(path, "it is used both as a file and as a folder")
        if not is_dir or (explicit and old_explicit):
            raise _reject(path, "it appears twice in the upload")
        if explicit:
            self._seen[key] = (path, True, True)

    def add_file(self, path: str) -> None:
        for name in parents(path):
            self._claim(name, True, False)
        self._claim(path, False, True)

    def add_dir(self, path: str) -> None:
        for name in parents(path):
            self._claim(name, True, False)
        self._claim(path, True, True)


# Few distinct letters in both cases (and an accent in both normal forms), so that the
# generated names collide in every way: exactly, by case, by normalization, file vs folder.
_PART = st.sampled_from(["a", "A", "b", "B", "caf\u00e9", "cafe\u0301", "CAF\u00c9"])
_PATH = st.lists(_PART, min_size=1, max_size=3).map("/".join)
_OPS = st.lists(st.tuples(st.booleans(), _PATH), max_size=25)


def _verdict(names: NameSet | ReferenceNameSet, is_dir: bool, path: str) -> str | None:
    try:
        if is_dir:
            names.add_dir(path)
        else:
            names.add_file(path)
    except NameRejected as exc:
        return exc.message
    return None


@given(_OPS)
def test_nameset_decides_and_words_as_the_reference(ops: list[tuple[bool, str]]) -> None:
    names, reference = NameSet(), ReferenceNameSet()
    for is_dir, path in ops:
        assert _verdict(names, is_dir, path) == _verdict(reference, is_dir, path)
        # both go on after a refusal (the client's scan reports every clash at once)
    for _, path in ops:
        assert (path in names) == (fold(path) in reference._seen)
