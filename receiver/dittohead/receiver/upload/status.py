"""``dittohead status v1 <study>``: the connecting user's own uploads, as the receiver sees them.

The receiver runs as the collector. Who that is comes from the kernel (`os.getuid`), never
from the request, which names only the study (`core.grammar.StatusRequest`). The answer is
read from the outcome documents the processor leaves in ``<dropbox>/<study>/outcomes/<uid>/``
(processor/outcomes.py): only that uid may enter that folder (an ACL the processor set), so
even a receiver changed by its user could read nothing of anyone else's.

The answer is one JSON document on stdout (docs/protocol.md, "status"):
``{"study", "user", "uploads": [...newest first...]}``, each upload ``upload``, ``source``,
``received_at``, ``state`` (``waiting`` | ``finalized`` | ``quarantined``), ``reason`` and
``files`` (``path``, ``outcome``, ``stored_as``). Documents that do not look like the
processor's are left out (the folder is the processor's; this is only care).
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

from dittohead.core.errors import ServerError
from dittohead.core.grammar import StatusRequest
from dittohead.receiver import fsops
from dittohead.receiver.accounts import user_name
from dittohead.receiver.config.checked import UploadSettings
from dittohead.receiver.dropbox import ENTRY_RE, OUTCOMES, study_dir
from dittohead.receiver.upload.gate import find_uploaders

#: the newest uploads answered (each lists every file; docs/protocol.md)
MAX_UPLOADS = 100
#: an outcome document larger than this is not the processor's (10,000 files ~ 2 MiB)
MAX_DOCUMENT = 64 << 20
_STATES = frozenset({"waiting", "finalized", "quarantined"})
_SUFFIX = ".json"


def _entry_key(name: str) -> tuple[str, str]:
    match = ENTRY_RE.fullmatch(name)
    assert match is not None
    return (match["time"], name)


def _read(dir_fd: int, name: str) -> dict[str, Any] | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None  # replaced meanwhile: the next query sees the new one
    try:
        data = os.read(fd, MAX_DOCUMENT + 1)
        buf = bytearray(data)
        while data and len(buf) <= MAX_DOCUMENT:
            data = os.read(fd, MAX_DOCUMENT + 1 - len(buf))
            buf += data
    finally:
        os.close(fd)
    if len(buf) > MAX_DOCUMENT:
        return None
    try:
        doc = json.loads(buf.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("state") not in _STATES:
        return None
    if not isinstance(doc.get("files"), list):
        return None
    return doc


def uploads(settings: UploadSettings, study: str, uid: int) -> list[dict[str, Any]]:
    """`uid`'s outcome documents for `study`, newest first (at most `MAX_UPLOADS`)."""
    folder = study_dir(settings.dropbox, study) / OUTCOMES / str(uid)
    try:
        dir_fd = os.open(folder, fsops.DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return []  # nothing of theirs has been processed yet
        raise ServerError(
            f"the server cannot show your uploads to {study!r} ({os.strerror(exc.errno or 0)}); "
            "tell the server's admin (the dropbox may lack POSIX ACLs)"
        ) from None
    try:
        names = [
            n[: -len(_SUFFIX)]
            for n in os.listdir(dir_fd)
            if n.endswith(_SUFFIX) and ENTRY_RE.fullmatch(n[: -len(_SUFFIX)])
        ]
        names.sort(key=_entry_key, reverse=True)
        out = []
        for entry in names[:MAX_UPLOADS]:
            doc = _read(dir_fd, entry + _SUFFIX)
            if doc is not None and doc.get("upload") == entry:
                out.append(doc)
        return out
    finally:
        os.close(dir_fd)


def answer(settings: UploadSettings, request: StatusRequest) -> str:
    """The status document (one line of JSON) for the user this process runs as."""
    find_uploaders(settings, request.study)  # "there is no study …" as for an upload
    uid = os.getuid()
    doc = {
        "study": request.study,
        "user": user_name(uid),
        "uploads": uploads(settings, request.study, uid),
    }
    return json.dumps(doc, ensure_ascii=False, sort_keys=True)
