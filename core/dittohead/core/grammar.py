"""The SSH command grammar (protocol v1).

An upload may end in one flag, `` zstd`` (docs/protocol.md, "Compression"): the client asks to
send some members zstd-compressed. A server from before the flag refuses the whole command as
malformed (exit 64, before reading a byte), and the client then sends again without it
(`dittohead.client.deliver`); a server that knows it refuses compressed members in an upload
that did not ask for them.

The client runs exactly one exec request; OpenSSH hands its command string to the receiver as
``SSH_ORIGINAL_COMMAND``. The receiver matches it against this exact grammar: no shell, no
shlex, no tolerance for extra spaces. Everything else (an interactive shell, sftp, scp, rsync)
is refused with a line telling the person to use the dittohead client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dittohead.core import PROTOCOL_VERSION
from dittohead.core.errors import ProtocolError

STUDY_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
SOURCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_UPLOAD_RE = re.compile(
    r"dittohead upload (?P<version>v[0-9]{1,3}) (?P<study>[a-z0-9][a-z0-9_-]{0,31}) "
    r"(?P<source>[A-Za-z0-9][A-Za-z0-9._-]{0,63})(?P<flag> zstd)?"
)
#: the upload command's flag that asks for compressed members (docs/protocol.md)
ZSTD_FLAG = "zstd"
_STATUS_RE = re.compile(
    r"dittohead status (?P<version>v[0-9]{1,3}) (?P<study>[a-z0-9][a-z0-9_-]{0,31})"
)
_USE_CLIENT = "this server only accepts uploads from the dittohead client; use 'dittohead send'"


@dataclass(frozen=True, slots=True)
class UploadRequest:
    """``dittohead upload v1 <study> <source>``, with `` zstd`` when `compress` is set."""

    study: str
    source: str
    #: members may be zstd-compressed (left out of repr: a plain request reads as before)
    compress: bool = field(default=False, repr=False)

    def command(self) -> str:
        flag = f" {ZSTD_FLAG}" if self.compress else ""
        return f"dittohead upload {PROTOCOL_VERSION} {self.study} {self.source}{flag}"


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """``dittohead status v1 <study>``: what became of the connecting user's own uploads.

    It names no user: who asks is the uid the receiver runs as (the kernel's word, not the
    client's)."""

    study: str

    def command(self) -> str:
        return f"dittohead status {PROTOCOL_VERSION} {self.study}"


#: any request of the v1 protocol
Request = UploadRequest | StatusRequest


def check_study(study: str) -> str:
    if not STUDY_RE.fullmatch(study):
        raise ProtocolError(
            f"{study!r} is not a valid study name (lower-case letters, digits, '-' and '_', "
            "at most 32 characters, starting with a letter or digit)"
        )
    return study


def check_source(source: str) -> str:
    if not SOURCE_RE.fullmatch(source):
        raise ProtocolError(
            f"{source!r} is not a valid station id (letters, digits, '.', '-' and '_', "
            "at most 64 characters, starting with a letter or digit)"
        )
    return source


def parse_request(command: str | None) -> Request:
    """Parse the SSH command string (an upload or a status query), or raise `ProtocolError`
    with words for the person."""
    if command is not None and command.startswith("dittohead status"):
        match = _STATUS_RE.fullmatch(command)
        if match is None:
            parts = command.split(" ")
            if len(parts) > 2 and re.fullmatch(r"v[0-9]{1,3}", parts[2]):
                _check_version(parts[2])
            raise ProtocolError(
                "malformed status request; expected "
                f"'dittohead status {PROTOCOL_VERSION} <study>' ({_USE_CLIENT})"
            )
        _check_version(match["version"])
        return StatusRequest(study=match["study"])
    return parse_command(command)


def _check_version(version: str) -> None:
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version} is not supported by this server "
            f"(it speaks {PROTOCOL_VERSION}); install the matching dittohead client"
        )


def parse_command(command: str | None) -> UploadRequest:
    """Parse an upload's SSH command string, or raise `ProtocolError` with words for the
    person."""
    if command is None or command.strip() == "":
        raise ProtocolError(f"no command was given: {_USE_CLIENT}")
    match = _UPLOAD_RE.fullmatch(command)
    if match is None:
        if command.startswith("dittohead upload "):
            parts = command.split(" ")
            if (
                len(parts) > 2
                and re.fullmatch(r"v[0-9]{1,3}", parts[2])
                and (parts[2] != PROTOCOL_VERSION)
            ):
                raise ProtocolError(
                    f"protocol version {parts[2]} is not supported by this server "
                    f"(it speaks {PROTOCOL_VERSION}); install the matching dittohead client"
                )
            raise ProtocolError(
                "malformed upload request; expected "
                f"'dittohead upload {PROTOCOL_VERSION} <study> <station> [{ZSTD_FLAG}]' "
                f"({_USE_CLIENT})"
            )
        raise ProtocolError(_USE_CLIENT)
    if match["version"] != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {match['version']} is not supported by this server "
            f"(it speaks {PROTOCOL_VERSION}); install the matching dittohead client"
        )
    return UploadRequest(
        study=match["study"], source=match["source"], compress=match["flag"] is not None
    )
