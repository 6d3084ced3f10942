"""The path policy: which relative names may be sent and stored.

One function decides, and both sides call it: the client before it sends (so a collector hears
about a bad name on their own PC, before anything crosses the network) and the receiver and the
processor on what arrives (where it is enforced). A name must be safe as a POSIX path *and* as a
Windows path, because study data goes back and forth between both.

Pure functions only; nothing here touches the file system.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from dittohead.core.errors import NameRejected

MAX_PATH_BYTES = 1024
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 32

#: The first path component reserved for dittohead's own members (the manifest).
RESERVED_TOP = ".dittohead"

# Device names that Windows resolves in every folder, with or without an extension
# (``CON``, ``con.txt``, ``COM1.log``); the superscript digits count as digits there too.
_WINDOWS_DEVICES = re.compile(
    r"(CON|PRN|AUX|NUL|CONIN\$|CONOUT\$|COM[0-9\u00b9\u00b2\u00b3]|LPT[0-9\u00b9\u00b2\u00b3])"
    r"(\..*)?",
    re.IGNORECASE,
)
# Characters Windows refuses in a file name (besides control characters and the separators).
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')

# The fast path of `check_path`: a whole relative path made only of printable ASCII that every
# rule accepts, matched by one regular expression instead of a Python loop over characters and
# components (a scan checks every name in the folder: ~0.5 µs instead of ~3-9 µs per path).
# It only ever *accepts*; anything it does not match (non-ASCII, "./", any doubt) goes through
# the rules below, which also word the refusal; tests/unit/core/test_names_fast_path.py proves
# that both decide alike. Per component: not a device name (CON, con.txt, LPT1…; superscript
# digits are not ASCII), 1 to 255 characters from _SAFE, and no dot or space at the end (which
# also excludes "." and ".."). re.ASCII keeps (?i) from matching non-ASCII letters that fold
# to ASCII ones (k and the Kelvin sign).
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '/\\<>:"|?*')
_SAFE_END = _SAFE.replace(".", "").replace(" ", "")
_FAST_COMPONENT = (
    r"(?!(?i:CON|PRN|AUX|NUL|CONIN\$|CONOUT\$|COM[0-9]|LPT[0-9])(?:\.|/|\Z))"
    rf"[{re.escape(_SAFE)}]{{0,{MAX_COMPONENT_BYTES - 1}}}[{re.escape(_SAFE_END)}]"
)
_FAST_PATH = re.compile(rf"{_FAST_COMPONENT}(?:/{_FAST_COMPONENT}){{0,{MAX_DEPTH - 1}}}", re.ASCII)
# The same, but not below the reserved folder (whose ASCII spellings fold to ".dittohead").
_FAST_USER_PATH = re.compile(r"(?!(?i:\.dittohead)(?:/|\Z))" + _FAST_PATH.pattern, re.ASCII)
#: A name of at most MAX_PATH_BYTES characters that this matches in full is one `check_path`
#: accepts unchanged, and not below the reserved folder (in any spelling); one that it does not
#: match may still be allowed (only `check_path` decides that).
PLAIN_USER_PATH = _FAST_USER_PATH
#: One component as PLAIN_USER_PATH matches it: components cannot hold "/", so a name
#: "<parent>/<base>" is matched by PLAIN_USER_PATH exactly when "<parent>" is, "<base>" is
#: matched by this, and "<parent>" has fewer than MAX_DEPTH components.
PLAIN_COMPONENT = re.compile(_FAST_COMPONENT, re.ASCII)


def _reject(name: str, why: str) -> NameRejected:
    return NameRejected(f"{name!r} is not an allowed name: {why}")


def _check_characters(name: str) -> None:
    for ch in name:
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            raise _reject(name, "it is not valid UTF-8")
        if ch == "\x00":
            raise _reject(name, "it contains a NUL byte")
        if code < 0x20 or 0x7F <= code <= 0x9F:
            raise _reject(name, "it contains a control character")
        if ch == "\\":
            raise _reject(name, "it contains a backslash")
        if ch in _WINDOWS_FORBIDDEN:
            raise _reject(name, f"it contains {ch!r}, which Windows does not allow")


def _check_component(name: str, part: str) -> None:
    if part == "":
        raise _reject(name, "it has an empty path component")
    if part in (".", ".."):
        raise _reject(name, f"it has a {part!r} path component")
    if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
        raise _reject(name, f"a path component is longer than {MAX_COMPONENT_BYTES} bytes")
    if part.endswith((".", " ")):
        raise _reject(name, "a path component ends with a dot or a space (not portable to Windows)")
    if _WINDOWS_DEVICES.fullmatch(part.rstrip(" ")):
        raise _reject(name, f"{part!r} is a reserved device name on Windows")


def normalize(name: str) -> str:
    """Strip the one leading ``./`` a tar tool may put in front of a name."""
    return name[2:] if name.startswith("./") else name


def check_path(name: str, *, allow_reserved: bool = False) -> str:
    """Return `name` (one leading ``./`` stripped) if it is an allowed relative path.

    Raises `NameRejected` naming the rule otherwise. `allow_reserved` lets the receiver check
    the manifest's own name; user files may never live under ``.dittohead/``.
    """
    fast = _FAST_PATH if allow_reserved else _FAST_USER_PATH
    if len(name) <= MAX_PATH_BYTES and fast.fullmatch(name):  # ASCII: a byte per character
        return name
    return check_path_by_rules(name, allow_reserved=allow_reserved)


def check_path_by_rules(name: str, *, allow_reserved: bool = False) -> str:
    """`check_path` without its fast path: every rule in turn (and the words of a refusal)."""
    name = normalize(name)
    if name == "":
        raise _reject(name, "it is empty")
    _check_characters(name)
    if name.startswith("/"):
        raise _reject(name, "it is an absolute path")
    if len(name.encode("utf-8")) > MAX_PATH_BYTES:
        raise _reject(name, f"it is longer than {MAX_PATH_BYTES} bytes")
    parts = name.split("/")
    if len(parts) > MAX_DEPTH:
        raise _reject(name, f"it is nested deeper than {MAX_DEPTH} folders")
    for part in parts:
        _check_component(name, part)
    if not allow_reserved and fold(parts[0]) == fold(RESERVED_TOP):
        raise _reject(name, f"the folder {RESERVED_TOP!r} is reserved for dittohead itself")
    return name


def fold(name: str) -> str:
    """The key under which Windows (and macOS) would see two names as the same file."""
    if name.isascii():  # NFC leaves ASCII alone, and ASCII case-folds to its lower case
        return name.lower()
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def parents(path: str) -> Iterator[str]:
    """``a/b/c`` → ``a``, ``a/b`` (the folders a path lives in, outermost first)."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


class NameSet:
    """The names of one upload, checked as they are added.

    Refuses a name seen before, a name that differs from an earlier one only in case or Unicode
    normalization (they would be one file on Windows), and a file that is also used as a folder
    (or the reverse). Folders that only appear as parents of files count as folders.
    """

    def __init__(self) -> None:
        # folded path -> what was stored under it: a file's spelling (a str), or a folder's
        # (spelling, explicit). Files are always named explicitly, and they are most names of an
        # upload: storing them bare (no tuple), and under the spelling itself when it is its own
        # folded key (lower-case ASCII, as most names are), keeps a name's cost to its slot here.
        self._seen: dict[str, str | tuple[str, bool]] = {}
        # Exact spellings stored as folders. An entry never changes its spelling or kind once
        # stored, and a folder is stored only after all its parents were, so a name whose
        # parent is in here need not claim its parents again (that would change nothing): one
        # look-up per name instead of one claim per parent.
        self._dirs: set[str] = set()

    def __contains__(self, path: str) -> bool:
        return fold(path) in self._seen

    def _claim(self, path: str, is_dir: bool, explicit: bool) -> None:
        key = path.lower() if path.isascii() else fold(path)  # fold, inlined (once per name)
        if key == path:
            key = path  # one string instead of two equal ones
        old = self._seen.get(key)
        if old is None:
            if is_dir:
                self._seen[key] = (path, explicit)
                self._dirs.add(path)
            else:
                self._seen[key] = path
            return
        if isinstance(old, str):
            spelling, old_is_dir, old_explicit = old, False, True
        else:
            (spelling, old_explicit), old_is_dir = old, True
        if spelling != path:
            raise _reject(
                path, f"it would be the same file as {spelling!r} on Windows (case or accents)"
            )
        if old_is_dir != is_dir:
            raise _reject(path, "it is used both as a file and as a folder")
        if not is_dir or (explicit and old_explicit):
            raise _reject(path, "it appears twice in the upload")
        if explicit:
            self._seen[key] = (path, True)

    def add_file(self, path: str) -> None:
        parent = path.rpartition("/")[0]
        if parent and parent not in self._dirs:
            for name in parents(path):
                self._claim(name, True, False)
        # The usual case of `_claim(path, False, True)`, inlined (once per file of an upload):
        # a name not seen before, stored bare.
        key = path.lower() if path.isascii() else fold(path)
        if key not in self._seen:
            self._seen[path if key == path else key] = path
            return
        self._claim(path, False, True)

    def add_dir(self, path: str) -> None:
        parent = path.rpartition("/")[0]
        if parent and parent not in self._dirs:
            for name in parents(path):
                self._claim(name, True, False)
        self._claim(path, True, True)
