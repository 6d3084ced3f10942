"""Login: how the client proves who it is, and where the host key decision plugs in.

`LoginClient` is the asyncssh client object of one connection. asyncssh calls it

* during the key exchange, for the server's host key (`hostkeys.HostKeyPolicy` decides; a
  refusal ends the connection before authentication starts, so no password can reach a server
  that could not prove its identity);
* during authentication, for passwords: at most three tries in all, shared between plain
  password and keyboard-interactive authentication (what OpenSSH servers using PAM ask for).
  A collector who gave ``--identity`` is never asked for a password (`asyncssh_transport`
  turns password logins off): a refused key is then said to be refused, not mistaken for three
  wrong passwords they may not even have.

It never prints; it asks through the callables it is given. A prompt that has nobody to ask
(`transport.CannotAsk`: no terminal) or that the collector interrupts (Ctrl-C) ends the login
at once: asyncssh is told "no answer" (an exception must not escape into its packet handler),
and the reason is kept for `connect_failure`, which turns whatever asyncssh or the operating
system raised while connecting into words for a collector.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from pathlib import Path

import asyncssh

from dittohead.client.transport import CannotAsk, SecretPrompt
from dittohead.client.transport.hostkeys import HostKeyPolicy
from dittohead.core.errors import (
    DittoheadError,
    HostKeyError,
    TransferError,
    UsageError,
    describe_os_error,
)

log = logging.getLogger(__name__)

MAX_PASSWORD_TRIES = 3


def load_identity(path: Path, ask: SecretPrompt | None) -> asyncssh.SSHKey:
    """Read the private key in `path`, asking for its passphrase if it has one."""
    try:
        return asyncssh.read_private_key(path)
    except OSError as exc:
        raise UsageError(f"cannot read the key file {describe_os_error(exc)}") from exc
    except ValueError as exc:
        if "assphrase" not in str(exc):
            raise UsageError(f"{path} is not an SSH private key ({exc})") from exc
    for _ in range(MAX_PASSWORD_TRIES):
        try:
            passphrase = ask(f"Passphrase for {path}: ") if ask is not None else None
        except CannotAsk:
            raise UsageError(
                f"the key {path} is protected by a passphrase and there is no terminal to ask "
                "for it on: run dittohead send in a terminal; nothing was sent"
            ) from None
        if passphrase is None:
            break
        try:
            return asyncssh.read_private_key(path, passphrase)
        except ValueError as exc:
            if "bcrypt" in str(exc):
                raise UsageError(
                    f"the key {path} is protected in a way this installation cannot open "
                    "(it needs the Python package bcrypt); ask your admin"
                ) from exc
            log.warning("wrong passphrase for %s", path)
    raise UsageError(f"could not unlock the key {path} (no right passphrase); nothing was sent")


class LoginClient(asyncssh.SSHClient):
    """asyncssh callbacks: host key decision and password prompts."""

    def __init__(
        self,
        policy: HostKeyPolicy,
        where: str,
        ask: SecretPrompt | None,
        *,
        identity: Path | None = None,
    ) -> None:
        self.policy = policy
        self.where = where  # "user@host" for the password prompt
        self.ask = ask
        self.identity = identity  # the key the collector named (--identity): no passwords
        self.password_tries = 0
        self.gave_up = False
        #: a password was needed and there was no terminal to ask for it on
        self.no_terminal = False
        #: the collector pressed Ctrl-C at a prompt (`asyncssh_transport` raises it again)
        self.interrupted = False
        self.host_key_error: DittoheadError | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        # Exceptions must not escape into asyncssh's packet handler; keep the reason and let
        # asyncssh fail the connection with HostKeyNotVerifiable, which `upload` turns back
        # into this error.
        try:
            self.policy.check(addr, key)
        except KeyboardInterrupt:
            self.interrupted = True  # Ctrl-C at the trust prompt: stop, trusting nothing
            return False
        except DittoheadError as exc:
            self.host_key_error = exc
            return False
        except Exception as exc:
            self.host_key_error = HostKeyError(
                f"the server's identity could not be checked ({exc}); nothing was sent"
            )
            return False
        return True

    def password_auth_requested(self) -> str | None:
        if self.ask is None or self.gave_up or self.password_tries >= MAX_PASSWORD_TRIES:
            return None
        self.password_tries += 1
        prompt = f"Password for {self.where}: "
        if self.password_tries > 1:  # asyncssh only asks again when the last one was refused
            tries = f"{self.password_tries} of {MAX_PASSWORD_TRIES}"
            prompt = f"Wrong password, try again ({tries}). {prompt}"
        try:
            password = self.ask(prompt)
        except CannotAsk:
            self.no_terminal, password = True, None
        except KeyboardInterrupt:
            self.interrupted, password = True, None
        if password is None:
            self.gave_up = True
        return password

    def kbdint_auth_requested(self) -> str | None:
        # OpenSSH servers using PAM ask for the password through keyboard-interactive
        # authentication; answer it like a password prompt (same three tries).
        return "" if self.ask is not None else None

    def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
    ) -> list[str] | None:
        if not prompts:
            return []  # an empty challenge only carries instructions
        if len(prompts) == 1 and not prompts[0][1]:  # one hidden answer: a password
            password = self.password_auth_requested()
            return [password] if password is not None else None
        return None


def connect_failure(
    exc: BaseException, host: str, port: int, user: str, client: LoginClient
) -> DittoheadError:
    if isinstance(exc, asyncssh.HostKeyNotVerifiable) and client.host_key_error is not None:
        return client.host_key_error
    if isinstance(exc, asyncssh.PermissionDenied):
        if client.identity is not None:
            return TransferError(
                f"could not log in to {host} as {user}: the server does not accept the key "
                f"{client.identity} for {user} (ask your admin to add that key's public half, "
                f"{client.identity}.pub, to the account {user}, or check --user and "
                "--identity); nothing was sent"
            )
        if client.no_terminal:
            return TransferError(
                f"could not log in to {host} as {user}: a password is needed and there is no "
                "terminal to ask for it on: log in with a key (--identity KEYFILE), or run "
                "dittohead send in a terminal; nothing was sent"
            )
        if client.password_tries >= MAX_PASSWORD_TRIES:
            why = f"wrong password (tried {MAX_PASSWORD_TRIES} times)"
        elif client.gave_up:
            why = "no password was given"
        else:
            why = "wrong password or key"
        return TransferError(f"could not log in to {host} as {user}: {why}; nothing was sent")
    if isinstance(exc, asyncssh.HostKeyNotVerifiable | asyncssh.KeyExchangeFailed):
        return HostKeyError(
            f"the server {host} could not prove its identity ({exc}); ask your admin; "
            "nothing was sent"
        )
    if isinstance(exc, socket.gaierror):
        return TransferError(
            f"could not find the server {host}: check its name and your network connection; "
            "nothing was sent"
        )
    if isinstance(exc, ConnectionRefusedError):
        return TransferError(
            f"the server {host} refused the connection on port {port}: check the port, or the "
            "server may be down; nothing was sent"
        )
    if isinstance(exc, TimeoutError):
        return TransferError(
            f"no answer from {host} on port {port}: check your network connection; nothing was sent"
        )
    if isinstance(exc, OSError):
        return TransferError(
            f"could not connect to {host} on port {port}: {describe_os_error(exc)}; "
            "nothing was sent"
        )
    reason = exc.reason if isinstance(exc, asyncssh.Error) else str(exc)
    return TransferError(f"could not connect to {host} on port {port}: {reason}; nothing was sent")
