"""login: keys with passphrases, and connection failures in words a collector understands."""

from __future__ import annotations

import socket
from pathlib import Path

import asyncssh
import pytest

from dittohead.client.transport import CannotAsk
from dittohead.client.transport.hostkeys import HostKeyPolicy
from dittohead.client.transport.login import LoginClient, connect_failure, load_identity
from dittohead.core.errors import HostKeyError, TransferError, UsageError


@pytest.fixture(params=["openssh", "pkcs8-pem"])
def locked_key(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, asyncssh.SSHKey]:
    # "openssh" is what ssh-keygen writes: asyncssh opens it only with bcrypt installed (a
    # dependency for that reason); PKCS#8 is the older PEM form some keys still have.
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / "id_locked"
    path.write_bytes(key.export_private_key(request.param, passphrase="s3cret"))
    return path, key


def test_an_unlocked_key_is_read_without_asking(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / "id"
    path.write_bytes(key.export_private_key("openssh"))
    assert load_identity(path, None).public_data == key.public_data


def test_a_passphrase_is_asked_for_until_it_is_right(
    locked_key: tuple[Path, asyncssh.SSHKey],
) -> None:
    path, key = locked_key
    answers = ["wrong", "s3cret"]
    prompts: list[str] = []

    def ask(prompt: str) -> str | None:
        prompts.append(prompt)
        return answers.pop(0)

    assert load_identity(path, ask).public_data == key.public_data
    assert len(prompts) == 2 and str(path) in prompts[0]


def test_three_wrong_passphrases_give_up(locked_key: tuple[Path, asyncssh.SSHKey]) -> None:
    path, _ = locked_key
    calls: list[str] = []

    def ask(prompt: str) -> str | None:
        calls.append(prompt)
        return "wrong"

    with pytest.raises(UsageError, match="could not unlock"):
        load_identity(path, ask)
    assert len(calls) == 3


def test_missing_or_bogus_key_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read the key file"):
        load_identity(tmp_path / "nope", None)
    (tmp_path / "bogus").write_text("not a key")
    with pytest.raises(UsageError, match="not an SSH private key"):
        load_identity(tmp_path / "bogus", None)


def _client(tries: int = 0, gave_up: bool = False) -> LoginClient:
    client = LoginClient(HostKeyPolicy("h", user_file=Path("/nonexistent/kh")), "u@h", None)
    client.password_tries, client.gave_up = tries, gave_up
    return client


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (socket.gaierror(-2, "Name or service not known"), "could not find the server h"),
        (ConnectionRefusedError(111, "Connection refused"), "refused the connection on port 22"),
        (TimeoutError(), "no answer from h on port 22"),
        (OSError(101, "Network is unreachable"), "Network is unreachable"),
        (asyncssh.ConnectionLost("reset"), "could not connect to h on port 22: reset"),
    ],
)
def test_network_failures_are_explained(exc: Exception, words: str) -> None:
    err = connect_failure(exc, "h", 22, "u", _client())
    assert isinstance(err, TransferError)
    assert words in err.message and "nothing was sent" in err.message


def test_login_failures_say_why() -> None:
    denied = asyncssh.PermissionDenied("denied")
    assert "wrong password or key" in connect_failure(denied, "h", 22, "u", _client()).message
    assert "tried 3 times" in connect_failure(denied, "h", 22, "u", _client(tries=3)).message
    assert (
        "no password was given" in connect_failure(denied, "h", 22, "u", _client(1, True)).message
    )
    assert "could not log in to h as u" in connect_failure(denied, "h", 22, "u", _client()).message


def test_a_host_key_refusal_comes_back_as_the_policys_own_error() -> None:
    client = _client()
    client.host_key_error = HostKeyError("WARNING: it changed")
    err = connect_failure(asyncssh.HostKeyNotVerifiable("x"), "h", 22, "u", client)
    assert err is client.host_key_error


def test_a_passphrase_without_a_terminal_is_one_clear_refusal(
    locked_key: tuple[Path, asyncssh.SSHKey],
) -> None:
    path, _ = locked_key

    def no_terminal(prompt: str) -> str | None:
        raise CannotAsk(prompt)

    with pytest.raises(UsageError, match="no terminal to ask for it on"):
        load_identity(path, no_terminal)
