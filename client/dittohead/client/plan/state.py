"""State: what the server has confirmed, so a re-send only sends what is new or changed.

One small JSON file per (server, port, study, source):

    {"version": 1, "server": "host:port", "study": "...", "source": "...",
     "files": {"eprime/s01.txt": [size, mtime_ns], ...}}

It is replaced only after the server's receipt has been checked, and atomically (temporary
file in the same folder, fsync, `os.replace`): a crash or a failed send leaves the previous
state in place, which at worst makes the next send repeat some files (the server keeps a
single copy of identical content), never skip one. The temporary file is written while the
receiver checks the upload (`State.stage`, see `deliver`); only the rename waits for the
receipt (`Staged.commit`), and without a good receipt the temporary file is removed.

Selection is by exact (size, mtime_ns) match against the state only. The tool dittohead
replaces picked files "newer than the last run" and so lost every file copied in with an old
modification time; here a file the server never confirmed is sent whatever its age.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TypeAlias

from dittohead.client.plan.scan import FileItem, Plan
from dittohead.core.errors import LocalFileError, UsageError, describe_os_error

#: a file's path as text or as a `Path`
StrPath: TypeAlias = str | os.PathLike[str]

log = logging.getLogger(__name__)

STATE_VERSION = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def state_folder() -> str:
    """The per-user folder for dittohead's client state (and its known-hosts file)."""
    join = os.path.join
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or join(_home(), "AppData", "Local")
        return join(base, "dittohead", "state")
    xdg = os.environ.get("XDG_STATE_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return join(xdg, "dittohead")
    return join(_home(), ".local", "state", "dittohead")


def _home() -> str:
    # `Path.home` as text (it calls os.path.expanduser too).
    home = os.path.expanduser("~")
    if home == "~":
        raise RuntimeError("Could not determine home directory.")  # as Path.home() does
    return home


def user_known_hosts_file() -> str:
    """dittohead's own known_hosts file (trust on first use), beside the state files."""
    return os.path.join(state_folder(), "known_hosts")


def user_known_hosts() -> Path:
    """`user_known_hosts_file` as a `Path`."""
    return Path(user_known_hosts_file())


def server_id(host: str, port: int) -> str:
    """``host:port`` (``[v6addr]:port`` for an IPv6 literal)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def default_state_file(host: str, port: int, study: str, source: str) -> str:
    """The default state file for this server, port, study and source.

    The readable part is sanitized for every file system; the short hash of the exact key keeps
    two keys that sanitize alike (``a:b`` and ``a_b``) from sharing a file.
    """
    key = f"{server_id(host, port)}\n{study}\n{source}"
    readable = _UNSAFE.sub("_", f"{host}_{port}_{study}_{source}").strip("._")[:150]
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:10]
    return os.path.join(state_folder(), f"sent-{readable}-{digest}.json")


class State:
    """The files the server has confirmed for one server, study and source (replaced by the
    new confirmations once a send's receipt checked out: `Staged.commit`)."""

    def __init__(
        self,
        path: StrPath,
        server: str,
        study: str,
        source: str,
        files: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        self.path = path
        self.server = server
        self.study = study
        self.source = source
        self.files = {} if files is None else files
        # Two parts of one send may get their receipts at the same moment, each in its own
        # thread (`batches`): their commits take turns, so neither replaces the file with a
        # merge that misses the other's files.
        self.commit_lock = threading.Lock()

    def is_confirmed(self, item: FileItem) -> bool:
        return self.files.get(item.path) == (item.size, item.mtime_ns)

    def select(self, plan: Plan) -> Plan:
        """The part of `plan` the server has not confirmed: new files and changed ones."""
        confirmed = self.files  # is_confirmed inlined: it runs once per file in the folder
        return plan.with_files(
            f for f in plan.files if confirmed.get(f.path) != (f.size, f.mtime_ns)
        )

    def to_json(self) -> bytes:
        # The files in the order they were merged (the previous state's, then the new ones):
        # sorting and turning each tuple into a list cost twice the encoding itself, and the C
        # encoder writes a tuple as a JSON array.
        doc = {
            "version": STATE_VERSION,
            "server": self.server,
            "study": self.study,
            "source": self.source,
            "files": self.files,
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def stage(self, sent: Iterable[FileItem]) -> Staged:
        """Write the state that confirms `sent` beside the current one, without replacing it.

        Everything but the rename, so that it can happen while the receiver checks the upload;
        `Staged.commit` (only after a valid receipt) puts it in place, `Staged.discard` drops it.
        The state file is read again first so that a send that finished meanwhile (another
        window, another THING) keeps its confirmations; should it change again before the
        commit, the commit reads it once more (see `Staged.commit`).
        """
        sent = tuple(sent)
        before = _signature(self.path)
        try:
            current = _read(self.path, self.server, self.study, self.source)
        except (UsageError, LocalFileError):
            current = {}
        merged = dict(self.files)
        merged.update(current)
        merged.update((f.path, (f.size, f.mtime_ns)) for f in sent)
        data = State(self.path, self.server, self.study, self.source, merged).to_json()
        try:
            tmp = _write_temp(self.path, data)
        except OSError as exc:
            raise _not_remembered(exc) from exc
        _sweep(self.path)
        return Staged(self, sent, merged, tmp, before)

    def record(self, sent: Iterable[FileItem]) -> None:
        """Remember `sent` as confirmed and save the state (call only after a valid receipt)."""
        self.stage(sent).commit()


class Staged:
    """A new state file written beside the old one (`State.stage`), waiting for the receipt."""

    def __init__(
        self,
        state: State,
        sent: tuple[FileItem, ...],
        files: dict[str, tuple[int, int]],
        tmp: str,
        before: tuple[int, int, int] | None,
    ) -> None:
        self.state = state
        self.sent = sent
        self.files = files
        self.tmp: str | None = tmp
        self.before = before

    def commit(self) -> None:
        """The receipt checked out: the new state replaces the old one.

        Raises `LocalFileError` when it cannot (the temporary file is removed then).
        """
        with self.state.commit_lock:
            self._commit()

    def _commit(self) -> None:
        if self.tmp is None:
            raise RuntimeError("this state was committed or discarded already")
        if _signature(self.state.path) != self.before:
            # Another send (or another part of this one) recorded something since the stage:
            # merge again from its file, as a state written all at once after the receipt
            # would have.
            self.discard()
            self.state.stage(self.sent)._commit()
            return
        try:
            os.replace(self.tmp, self.state.path)
        except OSError as exc:
            self.discard()
            raise _not_remembered(exc) from exc
        self.tmp = None
        self.state.files = self.files
        _fsync_dir(_folder_of(self.state.path))

    def discard(self) -> None:
        """No valid receipt: the state file stays as it was; the temporary file goes."""
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            self.tmp = None


def _not_remembered(exc: OSError) -> LocalFileError:
    return LocalFileError(
        f"the server stored the files, but dittohead could not remember that in "
        f"{describe_os_error(exc)}; the next send will repeat them"
    )


#: a temporary state file this old was left by a send that was killed while it waited for
#: its receipt (a window closed, say); a send that is still waiting is younger
_STALE_TMP = 24 * 3600


def _folder_of(path: StrPath) -> str:
    """``path.parent`` (``"."`` for a bare file name), as text."""
    return os.path.dirname(os.fspath(path)) or os.curdir


def _sweep(path: StrPath) -> None:
    """Remove temporary files of `path` that a killed send left behind."""
    prefix = f".{os.path.basename(path)}."
    limit = time.time() - _STALE_TMP
    try:
        with os.scandir(_folder_of(path)) as entries:
            for entry in entries:
                if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        if entry.stat(follow_symlinks=False).st_mtime < limit:
                            os.unlink(entry.path)
    except OSError:
        pass  # only tidying


def _signature(path: StrPath) -> tuple[int, int, int] | None:
    """What tells one version of the state file from another (None: there is none)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _parse(data: bytes) -> tuple[dict[str, object], dict[str, tuple[int, int]]]:
    """The document and its files as ``path → (size, mtime_ns)``; ValueError if malformed."""
    doc = json.loads(data.decode("utf-8"))
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        raise ValueError("not a version 1 state file")
    files = doc.get("files")
    if not isinstance(files, dict):
        raise ValueError("no files")
    # One pass that checks and converts (a state lists every file sent, tens of thousands).
    # JSON numbers come back as int, float or bool: ``type(v) is int`` refuses the last two.
    out: dict[str, tuple[int, int]] = {}
    for path, value in files.items():
        if type(value) is not list or len(value) != 2:
            raise ValueError("bad file entry")
        size, mtime = value
        if type(size) is not int or type(mtime) is not int:
            raise ValueError("bad file entry")
        out[path] = (size, mtime)
    return doc, out


def _read(path: StrPath, server: str, study: str, source: str) -> dict[str, tuple[int, int]]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise LocalFileError(
            f"cannot read the state file {describe_os_error(exc)}; nothing was sent"
        ) from exc
    try:
        doc, files = _parse(data)
    except (UnicodeDecodeError, ValueError):
        # Forgetting is safe (the next send repeats files, the server keeps one copy of
        # identical content); refusing to send would not be.
        log.warning("the state file %s is damaged; every file will be sent again", path)
        return {}
    owner = (doc.get("server"), doc.get("study"), doc.get("source"))
    if owner != (server, study, source):
        # Using another server's or study's record could skip files this one never received.
        raise UsageError(
            f"the state file {path} belongs to server {owner[0]}, study {owner[1]}, "
            f"station {owner[2]}, not to {server}, {study}, {source}; "
            "give another --state file (or leave --state out); nothing was sent"
        )
    return files


def load_state(path: StrPath | None, *, host: str, port: int, study: str, source: str) -> State:
    """Load the state for this server, study and source (empty if there is none yet).

    `path` is ``--state``; None means the per-user default file.
    """
    if path is None:
        path = default_state_file(host, port, study, source)
    server = server_id(host, port)
    return State(path, server, study, source, _read(path, server, study, source))


def write_atomic(path: StrPath, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content."""
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(_folder_of(path))


def _write_temp(path: StrPath, data: bytes) -> str:
    """A synced temporary file holding `data` in `path`'s folder (so a rename is atomic)."""
    folder = _folder_of(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)  # as Path.mkdir(parents=True, …)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _fsync_dir(folder: str) -> None:
    # The rename is durable only once the folder is synced; Windows cannot open folders (and
    # NTFS journals the rename itself), so this is POSIX only.
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the data itself is synced
    finally:
        os.close(fd)
