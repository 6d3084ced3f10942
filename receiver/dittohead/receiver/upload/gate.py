"""The gate: decide whether this connection may upload at all, before one byte is read.

sshd starts ``dittohead-receive`` through ``ForceCommand`` (or an authorized_keys
``command=``) as the collector, whatever the client asked for; the client's own request arrives
in ``SSH_ORIGINAL_COMMAND``. The gate matches it against the exact v1 grammar, loads the
config, checks that the study exists and that the collector's *real* groups (the kernel's, not
anything the client says) include one of the study's uploader groups, lowers the process's
resource limits, claims one of the collector's concurrent-upload slots, opens the study's inbox
and checks that there is room. Only then does the stage read standard input.

Nothing here trusts the environment beyond ``SSH_ORIGINAL_COMMAND`` (read as bytes and decoded
as UTF-8 explicitly: the collector may pick the locale through ``SendEnv LANG``).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import resource
import signal
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from dittohead.core.errors import (
    LimitExceeded,
    NotAuthorized,
    ProtocolError,
    ServerError,
    UploadRejected,
    UsageError,
)
from dittohead.core.grammar import Request, UploadRequest, parse_request
from dittohead.receiver import fsops
from dittohead.receiver.accounts import group_names, user_name
from dittohead.receiver.config import DEFAULT_CONFIG
from dittohead.receiver.config.checked import (
    UploadLimits,
    UploadSettings,
    load_settings,
    unknown_source,
)
from dittohead.receiver.dropbox import INBOX, study_dir
from dittohead.receiver.upload.stage import manifest_cap, out_of_space

log = logging.getLogger(__name__)

#: address-space cap: generous for a 4 MiB buffer and a large manifest, but finite, so a
#: hostile manifest or name list fails with MemoryError instead of starving the server
ADDRESS_SPACE_BYTES = 4 * 1024**3
#: RLIMIT_FSIZE headroom above the largest file the config allows
FSIZE_MARGIN = 1024 * 1024
#: where logind keeps each user's private runtime folder (holds the upload-slot locks)
RUNTIME_BASE = Path("/run/user")


@dataclass(frozen=True, slots=True)
class Options:
    """The command line."""

    config: Path
    verbose: bool


@dataclass(frozen=True, slots=True)
class Admission:
    """Everything the stage and the commit need about an admitted upload."""

    settings: UploadSettings
    request: UploadRequest
    user: str
    inbox_fd: int  # O_PATH fd of <dropbox>/<study>/inbox
    slot_fd: int | None  # held lock of a concurrent-upload slot (None: no runtime folder)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print the usage and exit 2 itself; the collector gets one line.
        raise UsageError(f"{message} (usage: dittohead-receive --config CFG [-v])")


def parse_args(argv: Sequence[str]) -> Options:
    parser = _Parser(
        prog="dittohead-receive",
        description="Receive one dittohead upload on standard input (run by sshd).",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="server config")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug log on stderr")
    parsed = parser.parse_args(list(argv))
    return Options(config=parsed.config, verbose=parsed.verbose)


def request_from_env(environ: Mapping[bytes, bytes]) -> Request:
    """The client's request from ``SSH_ORIGINAL_COMMAND``, matched against the v1 grammar
    (an upload, or a status query: `receive.main` dispatches)."""
    raw = environ.get(b"SSH_ORIGINAL_COMMAND")
    try:
        command = None if raw is None else raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(
            "this server only accepts uploads from the dittohead client; use 'dittohead send'"
        ) from None
    return parse_request(command)


def find_uploaders(settings: UploadSettings, name: str) -> tuple[str, ...]:
    """The uploader groups of study `name`."""
    uploaders = settings.uploaders.get(name)
    if uploaders is None:
        raise UploadRejected(
            f"there is no study {name!r} on this server; check the study name with your "
            "study runner"
        )
    return uploaders


def process_groups() -> set[str]:
    """The names of this process's real groups, as the kernel (not the client) has them."""
    return group_names({*os.getgroups(), os.getgid()})


def authorize(study_name: str, uploaders: tuple[str, ...], user: str, groups: set[str]) -> None:
    if groups.isdisjoint(uploaders):
        raise NotAuthorized(
            f"you ({user}) are not an uploader for study {study_name!r}; ask the server's "
            f"admin to add you to one of its uploader groups ({', '.join(uploaders)})"
        )


def _lower(which: int, value: int) -> None:
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    if soft == resource.RLIM_INFINITY or value < soft:
        resource.setrlimit(which, (value, hard))


def set_resource_limits(limits: UploadLimits) -> None:
    """Cap file size and address space for this process (whole-process, irreversible)."""
    # A write beyond RLIMIT_FSIZE raises SIGXFSZ, which kills by default: get EFBIG instead,
    # so the catch site can clean up and explain.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    largest = max(limits.max_file_bytes, manifest_cap(limits.max_files))
    _lower(resource.RLIMIT_FSIZE, largest + FSIZE_MARGIN)
    _lower(resource.RLIMIT_AS, ADDRESS_SPACE_BYTES)


def claim_slot(uid: int, limit: int, base: Path = RUNTIME_BASE) -> int | None:
    """Hold one of `limit` upload-slot locks of this user; refuse when all are held.

    The locks live in the user's private runtime folder (``/run/user/<uid>``, 0700, made by
    logind for every session), where no other user can create or squat them. Without such a
    folder the limit is not enforced here (returns None); see docs/admins/receiver.md.
    """
    try:
        dir_fd = os.open(base / str(uid), fsops.DIR_FLAGS)
    except OSError as exc:
        log.debug("no runtime folder for uid %d (%s); upload slots not enforced", uid, exc)
        return None
    try:
        st = os.fstat(dir_fd)
        if st.st_uid != uid or st.st_mode & 0o077 or not stat.S_ISDIR(st.st_mode):
            log.debug("runtime folder of uid %d is not private; upload slots not enforced", uid)
            return None
        for slot in range(limit):
            fd = os.open(
                f"dittohead-upload-{slot}.lock",
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd  # held until this process exits
    finally:
        os.close(dir_fd)
    raise LimitExceeded(
        f"you already have {limit} uploads running (limits.max_concurrent_uploads in the "
        "server's configuration); nothing was stored. Wait for one to finish and send again"
    )


def open_inbox(settings: UploadSettings, study_name: str) -> int:
    """An O_PATH fd of the study's inbox: enough to create, rename and remove entries in it
    (the collector has only write and search permission there, not read)."""
    path = study_dir(settings.dropbox, study_name) / INBOX
    try:
        return os.open(path, fsops.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ServerError(
            f"the server is not ready for study {study_name!r}: its inbox {path} cannot be "
            f"opened ({os.strerror(exc.errno or errno.EIO)}); nothing was stored. Tell the "
            "server's admin (dittohead-admin init)"
        ) from None


def check_space(inbox_fd: int, limits: UploadLimits) -> None:
    if fsops.free_bytes(inbox_fd) < limits.min_free_bytes:
        raise out_of_space()


def admit(options: Options, environ: Mapping[bytes, bytes]) -> Admission:
    """Run every check that needs no upload data; raise the first refusal."""
    request = request_from_env(environ)  # before the config: refuse sftp/scp/shell at once
    if not isinstance(request, UploadRequest):
        raise ProtocolError("this is not an upload request; use 'dittohead send'")
    settings = load_settings(options.config)
    uploaders = find_uploaders(settings, request.study)
    uid = os.getuid()
    user = user_name(uid)
    authorize(request.study, uploaders, user, process_groups())
    # After authorize: only the study's own collectors learn which station ids exist.
    refused = unknown_source(settings.sources, request.source)
    if refused is not None:
        raise UploadRejected(f"{refused}; nothing was sent")
    set_resource_limits(settings.limits)
    slot_fd = claim_slot(uid, settings.limits.max_concurrent_uploads)
    inbox_fd = open_inbox(settings, request.study)
    check_space(inbox_fd, settings.limits)
    log.debug("admitted %s to study %s from %s", user, request.study, request.source)
    return Admission(settings, request, user, inbox_fd, slot_fd)
