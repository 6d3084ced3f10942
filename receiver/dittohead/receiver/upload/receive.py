"""``dittohead-receive``: the receiver that sshd runs as the collector (``ForceCommand``).

gate (may this connection upload?) → stage (stream standard input into ``.<entry>``) → commit
(sync, rename to ``<entry>``, poke the processor, print the receipt).

This module is the one catch site. Whatever goes wrong, before or during staging (a refusal, a
full disk, a broken pipe, SIGTERM from sshd when the client goes away), the staging entry is
removed completely, the collector gets exactly one line ``dittohead: <what and what to do>`` on
stderr and the process exits with the error's code. Never a traceback: those go to the debug
log, which is only switched on with ``-v`` or ``DITTOHEAD_DEBUG=1``.

Output is written with ``os.write`` and explicit UTF-8, so neither the collector's locale nor a
closed pipe at interpreter exit can add a second line.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import suppress
from types import FrameType
from typing import NoReturn

from dittohead.core.errors import (
    DittoheadError,
    LimitExceeded,
    ServerError,
    TransferError,
    describe_os_error,
)
from dittohead.core.grammar import StatusRequest
from dittohead.core.process import run_and_exit
from dittohead.receiver import fsops
from dittohead.receiver.config.checked import load_settings
from dittohead.receiver.upload import commit, gate
from dittohead.receiver.upload.stage import Staging, out_of_space

log = logging.getLogger("dittohead.receiver")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Stopped(TransferError):
    """A stop signal arrived (sshd sends SIGHUP/SIGTERM when the client goes away)."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"the upload was stopped ({signal_name}); nothing was stored. Send again")
        self.signal_name = signal_name


def _stop(signum: int, frame: FrameType | None) -> None:
    # Turn the signal into an exception at whatever the receiver is doing, so that the one
    # catch site removes the staging entry (a plain kill would leave a dot entry behind).
    # Only once: sshd may follow SIGHUP with SIGTERM, and the second must not interrupt the
    # cleanup the first one started.
    _ignore_stop_signals()
    raise Stopped(signal.Signals(signum).name)


def _ignore_stop_signals() -> None:
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _setup_logging(verbose: bool) -> None:
    """Debug lines on stderr when asked for, else no log record reaches the collector."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("dittohead-receive[%(process)d] %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
    else:
        # A handler must exist, or logging's last resort prints warnings to the collector.
        root.addHandler(logging.NullHandler())


def _write_line(fd: int, text: str) -> None:
    fsops.write_all(fd, (text + "\n").encode("utf-8", "backslashreplace"))


def as_error(exc: BaseException) -> DittoheadError:
    """The `DittoheadError` that tells the collector about `exc`."""
    if isinstance(exc, DittoheadError):
        return exc
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return out_of_space()
        if exc.errno == errno.EFBIG:
            return LimitExceeded(
                "a file is larger than this server accepts (limits.max_file_bytes in the "
                "server's configuration); nothing was stored"
            )
        if exc.errno in (errno.EPIPE, errno.ECONNRESET):
            return TransferError("the connection was closed; nothing was stored. Send again")
        return ServerError(
            f"the server could not store the upload ({describe_os_error(exc)}); nothing was "
            "stored. Tell the server's admin"
        )
    if isinstance(exc, KeyboardInterrupt):
        return TransferError("the upload was interrupted; nothing was stored. Send again")
    if isinstance(exc, MemoryError):
        return LimitExceeded(
            "the upload needs more memory than this server allows; nothing was stored. "
            "Send fewer files at a time"
        )
    return ServerError(
        f"internal error ({type(exc).__name__}); nothing was stored. Tell the server's admin"
    )


def _cause(exc: BaseException) -> str:
    """A few words on what broke after the commit (the usual messages say nothing was stored)."""
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    if isinstance(exc, Stopped):
        return f"stopped by {exc.signal_name}"
    return type(exc).__name__


def entry() -> NoReturn:
    """The ``dittohead-receive`` command (sshd's ``ForceCommand``): `main`, then the process
    ends at once (see `dittohead.core.process`). Every line it owes the collector went out with
    ``os.write``; ending without the interpreter's teardown hands sshd the exit status, and the
    client the end of its receipt, ~20 ms sooner after 20,000 files."""
    run_and_exit(main)


def main(argv: Sequence[str] | None = None) -> int:
    """Receive one upload; return the exit status (0 after the receipt was printed)."""
    argv = sys.argv[1:] if argv is None else argv
    _setup_logging(os.environb.get(b"DITTOHEAD_DEBUG") == b"1")
    staging: Staging | None = None
    try:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, _stop)
        options = gate.parse_args(argv)
        if options.verbose:
            _setup_logging(True)
        request = gate.request_from_env(os.environb)
        if isinstance(request, StatusRequest):
            # A question, not an upload: nothing is read from stdin, nothing is written.
            from dittohead.receiver.upload import status

            _write_line(1, status.answer(load_settings(options.config), request))
            return 0
        admission = gate.admit(options, os.environb)
        staging = Staging(
            admission.inbox_fd,
            admission.request.source,
            admission.settings.limits,
            compressed=admission.request.compress,
        )
        staged = staging.receive(0)
        receipt = commit.commit(admission, staging, staged)
        _write_line(1, receipt.to_json())
        return 0
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except BaseException as exc:
        # From here on nothing may interrupt the cleanup: a second SIGTERM would leave the
        # entry half-removed.
        _ignore_stop_signals()
        error = as_error(exc)
        log.debug("upload failed", exc_info=exc)
        if staging is not None:
            if staging.committed:
                error = TransferError(
                    f"the upload was stored as {staging.entry}, but its receipt could not be "
                    f"sent ({_cause(exc)}); send again to get a receipt (nothing is stored "
                    "twice)"
                )
            try:
                staging.discard()
            except OSError as cleanup:
                log.debug("could not remove %s: %s", staging.dot_entry, cleanup)
        # If stderr is gone too, the collector is gone; the exit status is all that is left.
        with suppress(OSError):
            _write_line(2, error.line())
        return error.exit_code
    finally:
        # Done either way: a late signal must not escape as a traceback.
        _ignore_stop_signals()
        if staging is not None:
            staging.close()


if __name__ == "__main__":
    entry()
