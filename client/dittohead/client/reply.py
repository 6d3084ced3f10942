"""Reply: what the server's answer to an upload means, whichever transport carried it.

The receiver prints one JSON receipt on stdout and exits 0, or prints one ``dittohead: …`` line
on stderr and exits with a sysexits.h status (docs/protocol.md). `receipt` turns a
transport's `Answer` into a checked `Receipt` or into the error a collector reads; it is the one
place the receipt is checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from dittohead.client.pack import Pack
from dittohead.client.transport import Answer, server_words
from dittohead.core.errors import (
    ConfigError,
    DittoheadError,
    NotAuthorized,
    OutOfSpace,
    ProtocolError,
    ServerError,
    TransferError,
    UploadRejected,
)
from dittohead.core.grammar import UploadRequest
from dittohead.core.receipt import Receipt


class ServerRefused(DittoheadError):
    """The server refused the upload; nothing was stored."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.exit_code = status


#: a shell's status for "command not found": sshd ran the account's shell, not the receiver
SHELL_NOT_FOUND = 127
#: the status of dittohead's own command line (`dittohead.client.cli`) refusing its arguments:
#: a shell found the client's ``dittohead`` on the server, not the receiver
CLIENT_USAGE = 2


def not_set_up(status: int | None, stderr: bytes) -> bool:
    """Whether the answer came from the account's own shell instead of the receiver.

    On an account sshd does not force the receiver on (it is in no uploader group), the
    upload's command line reaches a shell: it answers "dittohead: command not found" (status
    127), or, where the dittohead client is installed on the server, the client's own usage
    error (status 2; the receiver never exits 2: it follows sysexits.h, docs/protocol.md).
    """
    text = stderr.decode("utf-8", "replace")
    if "dittohead-receive" in text:
        return False  # the forced command itself is missing: the admin's setup, told as is
    if status == SHELL_NOT_FOUND or (not server_words(stderr) and "not found" in text):
        return True
    return status == CLIENT_USAGE and "dittohead send --help" in text


# The server's exit status → the error class a GUI can test for (the receiver follows
# sysexits.h like dittohead.core.errors does); anything else keeps its status as-is.
_BY_STATUS: dict[int, type[DittoheadError]] = {
    64: ProtocolError,
    65: UploadRejected,
    70: ServerError,
    73: OutOfSpace,
    77: NotAuthorized,
    78: ConfigError,
}


def server_failure(
    status: int | None, stderr: bytes, host: str, user: str | None = None
) -> DittoheadError:
    """The error for a receiver that ended without a receipt, in the server's own words.

    `status` is None when no exit status arrived (the channel closed first); the server's
    ``dittohead: …`` line, when there is one, is still the best explanation there is.
    """
    if not_set_up(status, stderr):
        account = f"the account {user}" if user else "your account"
        return NotAuthorized(
            f"{account} on {host} is not set up for dittohead: the server answered with an "
            "ordinary shell instead of dittohead's receiver; ask your admin to add "
            f"{user or 'you'} to the study's uploader group; nothing was sent"
        )
    ours = server_words(stderr)
    known = status is not None and status > 0
    if ours and not known:
        return TransferError(ours[-1])
    if not known:
        return TransferError(
            f"the upload to {host} stopped before the server confirmed it; send again "
            "(files the server already has are not stored twice)"
        )
    assert status is not None
    if ours:
        cls = _BY_STATUS.get(status)
        if cls is not None:
            err = cls(ours[-1])
            err.exit_code = status
            return err
        return ServerRefused(ours[-1], status)
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    last = next((line for line in reversed(lines) if line), "no message")[:200]
    return ServerRefused(
        f"the server {host} failed without explaining why (exit status {status}: {last}); "
        "nothing was stored; tell your admin",
        status,
    )


@dataclass(frozen=True, slots=True)
class Sent:
    """What a receipt must confirm, taken from a pack whose stream is complete.

    `deliver` takes it while the receiver checks the upload: hashing the manifest is then off
    the time between the receipt and the end of the send.
    """

    files: int
    bytes: int
    manifest_sha256: str

    @classmethod
    def of(cls, pack: Pack) -> Sent:
        manifest = pack.manifest
        return cls(manifest.file_count, manifest.byte_count, pack.manifest_sha256)


def check_receipt(receipt: Receipt, sent: Pack | Sent, request: UploadRequest, host: str) -> None:
    """Refuse a receipt that does not describe exactly what was sent."""
    if not isinstance(sent, Sent):
        sent = Sent.of(sent)
    wrong = []
    if receipt.files != sent.files:
        wrong.append(f"{receipt.files!r} files instead of {sent.files}")
    if receipt.bytes != sent.bytes:
        wrong.append(f"{receipt.bytes!r} bytes instead of {sent.bytes}")
    if receipt.manifest_sha256 != sent.manifest_sha256:
        wrong.append("a different manifest")
    if (receipt.study, receipt.source) != (request.study, request.source):
        wrong.append(f"study {receipt.study!r} and station {receipt.source!r}")
    if not isinstance(receipt.upload, str) or not receipt.upload:
        wrong.append("no upload id")
    if wrong:
        raise TransferError(
            f"the receipt from {host} does not match what was sent ({'; '.join(wrong)}), so "
            "the upload cannot be confirmed; it will be sent again next time; tell your admin"
        )


def parse_receipt(stdout: bytes) -> Receipt:
    # The receipt is one line; anything a login script printed comes before it.
    lines = [line for line in stdout.decode("utf-8", "replace").splitlines() if line.strip()]
    return Receipt.from_json(lines[-1] if lines else "")


def receipt(
    answer: Answer, sent: Sent | None, request: UploadRequest, host: str, user: str | None = None
) -> Receipt:
    """The checked receipt in `answer`, or the error that says why there is none.

    `sent` is None when the stream did not reach its end (the server stopped reading first):
    whatever the server answered, nothing can be confirmed then. `user` (the account logged
    in as) is for the words only.
    """
    if answer.status != 0 or sent is None:
        raise server_failure(answer.status, answer.stderr, host, user)
    checked = parse_receipt(answer.stdout)
    check_receipt(checked, sent, request, host)
    return checked
