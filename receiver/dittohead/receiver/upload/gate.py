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

import errno
import fcntl
import os
import resource
import signal
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, NoReturn

from dittohead.core import logs
from dittohead.core.errors import (
    LimitExceeded,
    NotAuthorized,
    ProtocolError,
    ServerError,
    UploadRejected,
    UsageError,
)
from dittohead.core.grammar import UploadRequest, parse_command
from dittohead.core.values import Value
from dittohead.receiver import fsops
from dittohead.receiver.accounts import group_names, user_name
from dittohead.receiver.config import DEFAULT_CONFIG, Config, Limits, Study, load_config
from dittohead.receiver.dropbox import INBOX
from dittohead.receiver.upload.stage import manifest_cap, out_of_space

log = logs.getLogger(__name__)

#: address-space cap: generous for a 4 MiB buffer and a large manifest, but finite, so a
#: hostile manifest or name list fails with MemoryError instead of starving the server
ADDRESS_SPACE_BYTES = 4 * 1024**3
#: RLIMIT_FSIZE headroom above the largest file the config allows
FSIZE_MARGIN = 1024 * 1024
#: where logind keeps each user's private runtime folder (holds the upload-slot locks)
RUNTIME_BASE = Path("/run/user")


class Options(Value):
    """The command line (a `Value`)."""

    __slots__ = ("config", "verbose")
    _FIELDS = ("config", "verbose")

    config: Final[Path]
    verbose: Final[bool]

    def __init__(self, config: Path, verbose: bool) -> None:
        self.config = config
        self.verbose = verbose


class Admission(Value):
    """Everything the stage and the commit need about an admitted upload (a `Value`)."""

    __slots__ = ("config", "inbox_fd", "request", "slot_fd", "user")
    _FIELDS = ("config", "request", "user", "inbox_fd", "slot_fd")

    config: Final[Config]
    request: Final[UploadRequest]
    user: Final[str]
    inbox_fd: Final[int]  # O_PATH fd of <dropbox>/<study>/inbox
    slot_fd: Final[int | None]  # held lock of a concurrent-upload slot (None: no runtime folder)

    def __init__(
        self,
        config: Config,
        request: UploadRequest,
        user: str,
        inbox_fd: int,
        slot_fd: int | None,
    ) -> None:
        self.config = config
        self.request = request
        self.user = user
        self.inbox_fd = inbox_fd
        self.slot_fd = slot_fd


def parse_args(argv: Sequence[str]) -> Options:
    args = list(argv)
    # What sshd runs (`dittohead-admin sshd-config`: no options, or --config and a path) is read
    # without argparse, whose import is ~2 ms of every upload's start; the answer is the same
    # (a test holds the two to it). Anything else goes to argparse.
    if not args:
        return Options(config=DEFAULT_CONFIG, verbose=False)
    if len(args) == 2 and args[0] == "--config" and args[1][:1] not in ("", "-"):
        return Options(config=Path(args[1]), verbose=False)
    return _parse_with_argparse(args)


def _parse_with_argparse(args: list[str]) -> Options:
    import argparse  # noqa: PLC0415 (see parse_args)

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            # argparse would print the usage and exit 2 itself; the collector gets one line.
            raise UsageError(f"{message} (usage: dittohead-receive --config CFG [-v])")

    parser = Parser(
        prog="dittohead-receive",
        description="Receive one dittohead upload on standard input (run by sshd).",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="server config")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug log on stderr")
    parsed = parser.parse_args(args)
    return Options(config=parsed.config, verbose=parsed.verbose)


def request_from_env(environ: Mapping[bytes, bytes]) -> UploadRequest:
    """The client's request from ``SSH_ORIGINAL_COMMAND``, matched against the v1 grammar."""
    raw = environ.get(b"SSH_ORIGINAL_COMMAND")
    try:
        command = None if raw is None else raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(
            "this server only accepts uploads from the dittohead client; use 'dittohead send'"
        ) from None
    return parse_command(command)


def find_study(config: Config, name: str) -> Study:
    study = config.studies.get(name)
    if study is None:
        raise UploadRejected(
            f"there is no study {name!r} on this server; check the study name with your "
            "study runner"
        )
    return study


def process_groups() -> set[str]:
    """The names of this process's real groups, as the kernel (not the client) has them."""
    return group_names({*os.getgroups(), os.getgid()})


def authorize(study_name: str, study: Study, user: str, groups: set[str]) -> None:
    if groups.isdisjoint(study.uploaders):
        raise NotAuthorized(
            f"you ({user}) are not an uploader for study {study_name!r}; ask the server's "
            f"admin to add you to one of its uploader groups ({', '.join(study.uploaders)})"
        )


def _lower(which: int, value: int) -> None:
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    if soft == resource.RLIM_INFINITY or value < soft:
        resource.setrlimit(which, (value, hard))


def set_resource_limits(limits: Limits) -> None:
    """Cap file size and address space for this process (whole-process, irreversible)."""
    # A write beyond RLIMIT_FSIZE raises SIGXFSZ, which kills by default: get EFBIG instead,
    # so the catch site can clean up and explain.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    largest = max(limits.max_file_bytes, manifest_cap(limits))
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


def open_inbox(config: Config, study_name: str) -> int:
    """An O_PATH fd of the study's inbox: enough to create, rename and remove entries in it
    (the collector has only write and search permission there, not read)."""
    path = config.study_dir(study_name) / INBOX
    try:
        return os.open(path, fsops.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ServerError(
            f"the server is not ready for study {study_name!r}: its inbox {path} cannot be "
            f"opened ({os.strerror(exc.errno or errno.EIO)}); nothing was stored. Tell the "
            "server's admin (dittohead-admin init)"
        ) from None


def check_space(inbox_fd: int, limits: Limits) -> None:
    if fsops.free_bytes(inbox_fd) < limits.min_free_bytes:
        raise out_of_space()


def admit(options: Options, environ: Mapping[bytes, bytes]) -> Admission:
    """Run every check that needs no upload data; raise the first refusal."""
    request = request_from_env(environ)  # before the config: refuse sftp/scp/shell at once
    config = load_config(options.config)
    study = find_study(config, request.study)
    uid = os.getuid()
    user = user_name(uid)
    authorize(request.study, study, user, process_groups())
    set_resource_limits(config.limits)
    slot_fd = claim_slot(uid, config.limits.max_concurrent_uploads)
    inbox_fd = open_inbox(config, request.study)
    check_space(inbox_fd, config.limits)
    log.debug("admitted %s to study %s from %s", user, request.study, request.source)
    return Admission(config, request, user, inbox_fd, slot_fd)
