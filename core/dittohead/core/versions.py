"""Version naming: how the n-th different content sent for one path is named.

The first version keeps its plain name forever; later ones are ``dir/name~2.ext``,
``dir/name~3.ext`` ... with the extension kept last so programs still open the file
(``a.tar.gz`` → ``a.tar~2.gz``). Pure and deterministic: the same path and number always give
the same name, and different numbers always give different names.
"""

from __future__ import annotations

from collections.abc import Iterator

from dittohead.core.names import MAX_COMPONENT_BYTES


def split_ext(name: str) -> tuple[str, str]:
    """``a.tar.gz`` → (``a.tar``, ``.gz``); ``.bashrc`` → (``.bashrc``, ``""``)."""
    dot = name.rfind(".")
    if dot <= 0 or name[:dot].strip(".") == "":
        return name, ""
    return name[:dot], name[dot:]


def _trim_utf8(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8")[:max_bytes]
    return data.decode("utf-8", errors="ignore")


def version_name(path: str, number: int) -> str:
    """The stored name of version `number` (1-based) of `path`."""
    if number < 1:
        raise ValueError("versions are numbered from 1")
    if number == 1:
        return path
    head, _, name = path.rpartition("/")
    stem, ext = split_ext(name)
    suffix = f"~{number}"
    room = MAX_COMPONENT_BYTES - len(suffix.encode()) - len(ext.encode("utf-8"))
    if room < 1:
        # An extension so long that nothing else fits: treat the whole name as the stem.
        stem, ext = name, ""
        room = MAX_COMPONENT_BYTES - len(suffix.encode())
    stem = _trim_utf8(stem, room)
    versioned = f"{stem}{suffix}{ext}"
    return f"{head}/{versioned}" if head else versioned


def candidate_names(path: str, start: int = 1) -> Iterator[tuple[int, str]]:
    """Every name `path` may be stored under, in the order they are tried."""
    number = start
    while True:
        yield number, version_name(path, number)
        number += 1
