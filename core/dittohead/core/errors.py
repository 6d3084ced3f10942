"""The one error root of dittohead.

Every failure a person may meet is a subclass of `DittoheadError`: its message says what
happened and what to do, in words for whoever reads it (collector, study runner or admin), and
it carries the exit code of the command that stops on it. Each entry point has one catch site
that prints ``dittohead: <message>``; tracebacks only go to the log.
"""

from __future__ import annotations

import os


class DittoheadError(Exception):
    """Something went wrong."""

    #: exit status of a command that stops on this error (sysexits.h where one fits)
    exit_code: int = 1

    def __init__(self, message: str | None = None) -> None:
        text = message if message is not None else (self.__doc__ or type(self).__name__)
        super().__init__(" ".join(text.split()))

    @property
    def message(self) -> str:
        return str(self.args[0])

    def line(self) -> str:
        """The one line a command prints for this error."""
        return f"dittohead: {self.message}"


class UsageError(DittoheadError):
    """The command was not called the right way."""

    exit_code = 2


class ConfigError(DittoheadError):
    """The configuration file is not valid."""

    exit_code = 78  # EX_CONFIG


class NameRejected(DittoheadError):
    """A file or folder name is not allowed."""

    exit_code = 65  # EX_DATAERR


class ProtocolError(DittoheadError):
    """The request did not follow the dittohead protocol."""

    exit_code = 64  # EX_USAGE


class NotAuthorized(DittoheadError):
    """You are not allowed to do this."""

    exit_code = 77  # EX_NOPERM


class UploadRejected(DittoheadError):
    """The upload was refused; nothing was stored."""

    exit_code = 65  # EX_DATAERR


class LimitExceeded(UploadRejected):
    """The upload is larger than this server accepts; nothing was stored."""


class OutOfSpace(DittoheadError):
    """The server is out of space; nothing was stored. Tell the server's admin."""

    exit_code = 73  # EX_CANTCREAT


class ServerError(DittoheadError):
    """The server could not finish the job. Tell the server's admin."""

    exit_code = 70  # EX_SOFTWARE


class TransferError(DittoheadError):
    """The connection to the server failed."""

    exit_code = 69  # EX_UNAVAILABLE


class HostKeyError(DittoheadError):
    """The server's identity could not be confirmed; nothing was sent."""

    exit_code = 69  # EX_UNAVAILABLE


class LocalFileError(DittoheadError):
    """A local file could not be read."""

    exit_code = 66  # EX_NOINPUT


def describe_os_error(exc: OSError) -> str:
    """A short human description of an OSError, without a traceback."""
    what = exc.strerror or os.strerror(exc.errno or 0)
    if exc.filename is not None:
        return f"{exc.filename}: {what}"
    return what
