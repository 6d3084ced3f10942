"""Layout: where a send's files land in the study's folder, and whether FOLDER looks misnamed.

The server stores every file at its path relative to FOLDER, below the study's folder (its
destination: docs/study-runners/README.md). So FOLDER is the *study's* folder, and the things
(``eprime/``, ``biopac/``) are inside it. A collector who names a thing itself as FOLDER
(``D:\\Data\\nccam3\\eprime``) sends ``s01.txt``, not ``eprime/s01.txt``: the files land at
the top of the study's folder, next to ``eprime/``, and nothing on the server can tell that
this was not meant. `landing` says where the files go (``--dry-run`` and the receipt show it)
and `misnamed_folder` warns before the send when FOLDER itself looks like a thing:

* its name is a top-level folder the server already confirmed files in, for this server, study
  and station (the state file: an earlier send of the whole study folder), or
* the folder it is in has the study's name (``…/nccam3/eprime`` sent with ``--study nccam3``).

Deliberately no list of "usual" thing names: every lab names its instruments differently, and
a warning that fires on folders that are right teaches people to ignore warnings. Both checks
are pure: they read only names (docs/collectors/sending.md, "Which folder to give").
"""

from __future__ import annotations

import ntpath
import posixpath
from collections import Counter
from collections.abc import Iterable

#: how many top-level folders and loose files `landing` names before it only counts
_SHOWN = 4


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def landing(paths: Iterable[str]) -> str:
    """Where files with these relative POSIX `paths` are stored, in a few words:
    ``eprime/ (2 files), biopac/ (1 file)``, and any loose files at the top of the study's
    folder (``2 files at the top of the study's folder: a.txt, b.txt``)."""
    folders: Counter[str] = Counter()
    loose: list[str] = []
    for path in paths:
        top, slash, _ = path.partition("/")
        if slash:
            folders[top] += 1
        else:
            loose.append(path)
    parts = [f"{name}/ ({_plural(n, 'file')})" for name, n in sorted(folders.items())]
    if len(parts) > _SHOWN:
        parts[_SHOWN:] = [f"{len(parts) - _SHOWN} more folders"]
    if loose:
        names = ", ".join(sorted(loose)[:_SHOWN]) + (", …" if len(loose) > _SHOWN else "")
        parts.append(f"{_plural(len(loose), 'file')} at the top of the study's folder: {names}")
    return ", ".join(parts) if parts else "nothing"


def _split(folder: str) -> tuple[str, str, str]:
    """(the folder above, the folder's name, the name of the folder above) of an absolute
    path, with either separator (a Windows path may be checked on any system in tests)."""
    path = ntpath if "\\" in folder or ntpath.splitdrive(folder)[0] else posixpath
    trimmed = folder.rstrip("/\\") or folder
    above, name = path.split(trimmed)
    return above, name, path.basename(above.rstrip("/\\"))


def misnamed_folder(folder: str, study: str, confirmed: Iterable[str]) -> str | None:
    """A warning when `folder` (FOLDER, absolute) looks like one of the study's things rather
    than the study's folder, else None. `confirmed`: the paths the state says the server
    already has from this station."""
    above, name, above_name = _split(folder)
    if not name:
        return None
    tops = {path.partition("/")[0] for path in confirmed if "/" in path}
    if name in tops:
        why = f"this station already sent files into a folder {name}/ of study {study}"
    elif above_name and above_name.casefold() == study.casefold():
        why = f"it is inside a folder named like the study ({above_name})"
    else:
        return None
    return (
        f"{folder} looks like one of the study's subfolders ({why}): its files are stored at "
        f"the top of the study's folder, not in {name}/; to keep them in {name}/, give the "
        f"folder above it and name {name} after it (dittohead send … {above} {name})"
    )
