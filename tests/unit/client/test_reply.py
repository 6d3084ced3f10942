"""Reply: the server's answer judged once, whichever transport carried it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dittohead.client import reply
from dittohead.client.pack import Pack
from dittohead.client.plan.scan import scan
from dittohead.client.reply import Sent
from dittohead.client.transport import Answer
from dittohead.core.errors import (
    DittoheadError,
    NotAuthorized,
    OutOfSpace,
    ServerError,
    TransferError,
    UploadRejected,
)
from dittohead.core.grammar import UploadRequest
from dittohead.core.receipt import Receipt

from .conftest import SOURCE, STUDY, USER, write_tree

REQUEST = UploadRequest(STUDY, SOURCE)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(77, NotAuthorized), (73, OutOfSpace), (65, UploadRejected), (70, ServerError), (42, None)],
)
def test_server_failure_keeps_the_servers_words_and_status(
    status: int, expected: type[DittoheadError] | None
) -> None:
    err = reply.server_failure(status, b"motd noise\ndittohead: you may not; ask your admin\n", "h")
    assert err.message == "you may not; ask your admin"
    assert err.exit_code == status
    if expected is not None:
        assert isinstance(err, expected)


def test_server_failure_without_an_exit_status_still_shows_the_servers_words() -> None:
    err = reply.server_failure(None, b"dittohead: there is no study 'x' on this server\n", "h")
    assert isinstance(err, TransferError)
    assert err.message == "there is no study 'x' on this server"


def test_server_failure_without_a_dittohead_line() -> None:
    err = reply.server_failure(127, b"bash: dittohead-receive: command not found\n", "h")
    assert err.exit_code == 127
    assert "command not found" in err.message and "tell your admin" in err.message
    lost = reply.server_failure(None, b"", "h")
    assert isinstance(lost, TransferError) and "send again" in lost.message


@pytest.fixture
def pack(tmp_path: Path) -> Pack:
    root = write_tree(tmp_path / "d", {"a": b"abc"})
    streamed = Pack(scan(root))
    b"".join(streamed)
    return streamed


def _receipt(pack: Pack, **changed: Any) -> Receipt:
    fields = {"upload": "up", "study": STUDY, "source": SOURCE, "user": USER, "files": 1,
              "bytes": 3, "manifest_sha256": pack.manifest_sha256,
              "received_at": "2026-01-01T00:00:00Z"}  # fmt: skip
    return Receipt(**{**fields, **changed})


def test_a_receipt_must_be_json_and_must_match(pack: Pack) -> None:
    with pytest.raises(TransferError, match="not a dittohead receipt"):
        reply.parse_receipt(b"hello\n")
    with pytest.raises(TransferError):
        reply.parse_receipt(b"")
    reply.check_receipt(_receipt(pack), pack, REQUEST, "h")
    for bad in (
        _receipt(pack, files=2),
        _receipt(pack, bytes=4),
        _receipt(pack, manifest_sha256="0" * 64),
        _receipt(pack, study="other"),
        _receipt(pack, source="other"),
        _receipt(pack, upload=""),
    ):
        with pytest.raises(TransferError, match="does not match what was sent"):
            reply.check_receipt(bad, pack, REQUEST, "h")


def test_an_answer_becomes_the_checked_receipt(pack: Pack) -> None:
    good = _receipt(pack)
    stdout = b"login noise\n" + good.to_json().encode() + b"\n"
    assert reply.receipt(Answer(stdout, b"", 0), Sent.of(pack), REQUEST, "h") == good
    with pytest.raises(TransferError, match="does not match what was sent"):
        answer = Answer(_receipt(pack, files=2).to_json().encode(), b"", 0)
        reply.receipt(answer, Sent.of(pack), REQUEST, "h")


@pytest.mark.parametrize("status", [None, 0, -9])
def test_an_answer_without_a_complete_stream_or_a_status_confirms_nothing(
    pack: Pack, status: int | None
) -> None:
    # A receipt on stdout counts only with exit status 0 after the whole stream was sent.
    answer = Answer(_receipt(pack).to_json().encode(), b"", status)
    with pytest.raises(TransferError, match="stopped before the server confirmed it"):
        reply.receipt(answer, Sent.of(pack) if status != 0 else None, REQUEST, "h")


def test_an_answer_with_the_servers_refusal_is_that_refusal(pack: Pack) -> None:
    answer = Answer(b"", b"dittohead: you may not upload to this study\n", 77)
    with pytest.raises(NotAuthorized, match="you may not upload to this study") as caught:
        reply.receipt(answer, Sent.of(pack), REQUEST, "h")
    assert caught.value.exit_code == 77


@pytest.mark.parametrize(
    ("status", "stderr"),
    [
        (127, b"bash: line 1: dittohead: command not found\n"),
        (127, b"sh: 1: dittohead: not found\n"),
        (1, b"zsh:1: command not found: dittohead\n"),
        # the dittohead client installed on the server, answering in place of the receiver
        (
            2,
            b"dittohead: argument COMMAND: invalid choice: 'upload' (choose from 'send') "
            b"(see 'dittohead send --help')\n",
        ),
    ],
)
def test_an_account_that_is_not_a_collector_is_recognised(status: int, stderr: bytes) -> None:
    err = reply.server_failure(status, stderr, "drop.example.org", "jdoe")
    assert isinstance(err, NotAuthorized) and err.exit_code == NotAuthorized.exit_code
    assert err.message.startswith("the account jdoe on drop.example.org is not set up for")
    assert "ask your admin to add jdoe to the study's uploader group" in err.message
    assert "command not found" not in err.message


def test_a_missing_receiver_is_not_mistaken_for_an_account_that_is_not_set_up() -> None:
    # sshd forces the receiver on the account, but it is not where the admin said: their setup.
    stderr = b"bash: line 1: /usr/bin/dittohead-receive: No such file or directory\n"
    err = reply.server_failure(127, stderr, "h", "jdoe")
    assert "failed without explaining why" in err.message
    assert "dittohead-receive" in err.message and "tell your admin" in err.message


def test_the_receivers_own_refusals_are_not_taken_for_a_shell() -> None:
    err = reply.server_failure(77, b"dittohead: there is no study 'x' on this server\n", "h", "u")
    assert err.message == "there is no study 'x' on this server"
