"""The asyncssh transport: dittohead's own SSH client, for every upload OpenSSH cannot carry.

`deliver` offers each upload to OpenSSH's ``ssh`` first (`openssh`), which carries it when it
can without asking anything; everything else comes here, and so does an upload ``ssh`` gave up
on before the receiver ran: this client asks the collector (trust this server? password?), or
refuses in dittohead's words. This module and the two it uses (`login`, `hostkeys`) are the
only ones that import asyncssh, and `deliver` imports this one only when it is needed: a send
that OpenSSH carries never loads asyncssh.

The whole upload is a single ``dittohead upload v1 <study> <source>`` exec request whose stdin
is the tar stream from `pack` (per-file round trips are ruinous: docs/design.md, "Performance
by design"); the answer goes back to `deliver` as it came (`transport.Answer`), and `reply`
judges it.

Connection settings, and why:

* host keys are decided by `hostkeys.HostKeyPolicy` during the key exchange, before any
  password is sent (``known_hosts=([], [], [])`` makes asyncssh ask us about every key);
* AES-GCM first (asyncssh would pick chacha20-poly1305, ~40% slower here), compression off
  (it costs 10x on the random-looking data instruments produce);
* ``~/.ssh/config`` is not read (``config=None``): what dittohead checks and how it connects
  must not depend on a file the collector may not know exists;
* at most three password tries, then a clear "could not log in" (see `login`); none with
  ``--identity``: the collector chose a key, and a refused key is said to be refused;
* Ctrl-C at a prompt (the trust question, a password) ends the send at once: the prompt
  raises KeyboardInterrupt, `login.LoginClient` answers asyncssh "no", and once asyncssh has
  closed the connection `carry` raises KeyboardInterrupt again, outside the event loop.

Only the CLI prints: prompts go through the callables in `transport.Prompts`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.encryption import get_default_encryption_algs

from dittohead.client.pack import Pack
from dittohead.client.transport import (
    CONNECT_TIMEOUT,
    KEEPALIVE_INTERVAL,
    Answer,
    Progress,
    Prompts,
    Server,
    login_name,
)
from dittohead.client.transport.hostkeys import HostKeyPolicy
from dittohead.client.transport.login import LoginClient, connect_failure, load_identity
from dittohead.core.errors import DittoheadError, TransferError
from dittohead.core.grammar import Request

log = logging.getLogger(__name__)

PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def cipher_preference() -> list[str]:
    """AES-GCM first (hardware accelerated), then the rest of asyncssh's defaults."""
    rest = [alg.decode("ascii") for alg in get_default_encryption_algs()]
    return list(dict.fromkeys([*PREFERRED_CIPHERS, *rest]))


class _Interrupted(Exception):
    """Ctrl-C at a prompt: raised out of the event loop, then KeyboardInterrupt again."""


class AsyncsshTransport:
    """One upload through asyncssh (a `transport.Transport`): it connects when it carries."""

    def __init__(self, server: Server, request: Request, prompts: Prompts | None) -> None:
        self.server = server
        self.request = request
        self.prompts = prompts or Prompts()

    def carry(
        self, pack: Pack, *, progress: Progress | None, streamed: Callable[[], None]
    ) -> Answer:
        """Connect, log in and send `pack` (see `transport.Transport.carry`).

        Failing to connect or to log in raises the `DittoheadError` that says why, in words for
        the collector (`login.connect_failure`); this transport never raises `Unusable`.
        """
        key = self._key()
        try:
            return asyncio.run(self._carry(pack, progress, streamed, key))
        except _Interrupted:
            raise KeyboardInterrupt from None

    def _key(self) -> asyncssh.SSHKey | None:
        # The key is read (and its passphrase asked for) before the event loop runs: there
        # Ctrl-C at the passphrase prompt is an ordinary KeyboardInterrupt.
        if self.server.identity is None:
            return None
        return load_identity(Path(self.server.identity), self.prompts.passphrase)

    def ask(self) -> Answer:
        """Connect, log in and run the request with nothing on its standard input (a
        question such as ``dittohead status``, not an upload); the server's answer."""
        key = self._key()
        try:
            return asyncio.run(self._ask(key))
        except _Interrupted:
            raise KeyboardInterrupt from None

    async def _ask(self, key: asyncssh.SSHKey | None) -> Answer:
        conn = await self._connect(key)
        try:
            try:
                done = await conn.run(self.request.command(), stdin=asyncssh.DEVNULL, encoding=None)
            except (OSError, asyncssh.Error) as exc:
                raise TransferError(
                    f"the server {self.server.host} did not answer ({exc}); try again later"
                ) from exc
            stdout = done.stdout if isinstance(done.stdout, bytes) else b""
            stderr = done.stderr if isinstance(done.stderr, bytes) else b""
            return Answer(stdout, stderr, done.exit_status)
        finally:
            conn.close()
            await conn.wait_closed()

    async def _carry(
        self,
        pack: Pack,
        progress: Progress | None,
        streamed: Callable[[], None],
        key: asyncssh.SSHKey | None,
    ) -> Answer:
        conn = await self._connect(key)
        try:
            return await self._session(conn, pack, progress, streamed)
        finally:
            conn.close()
            await conn.wait_closed()

    async def _connect(self, key: asyncssh.SSHKey | None) -> asyncssh.SSHClientConnection:
        server, prompts = self.server, self.prompts
        user = server.user or login_name()
        pinned = None if server.known_hosts is None else Path(server.known_hosts)
        policy = HostKeyPolicy(server.host, server.port, pinned=pinned, ask=prompts.trust)
        identity = None if server.identity is None else Path(server.identity)
        client = LoginClient(policy, f"{user}@{server.host}", prompts.password, identity=identity)
        options: dict[str, Any] = {
            "port": server.port,
            "username": user,
            "client_factory": lambda: client,
            "known_hosts": ([], [], []),
            "server_host_key_algs": policy.host_key_algs(),
            "encryption_algs": cipher_preference(),
            "compression_algs": None,
            "config": None,
            "host_based_auth": False,
            "connect_timeout": CONNECT_TIMEOUT,
            "keepalive_interval": KEEPALIVE_INTERVAL,
        }
        if key is not None:
            options["client_keys"] = [key]
            options["agent_path"] = None  # only the key that was asked for
            # The collector chose a key: when the server refuses it, say so (`login`) rather
            # than ask for a password they may not have.
            options["password_auth"] = False
            options["kbdint_auth"] = False
        try:
            conn = await asyncssh.connect(server.host, **options)
        except (OSError, asyncssh.Error) as exc:
            if client.interrupted:
                raise _Interrupted from None
            raise connect_failure(exc, server.host, server.port, user, client) from exc
        log.info(
            "connected to %s as %s (cipher %s)",
            server.host,
            user,
            conn.get_extra_info("send_cipher"),
        )
        return conn

    async def _session(
        self,
        conn: asyncssh.SSHClientConnection,
        pack: Pack,
        progress: Progress | None,
        streamed: Callable[[], None],
    ) -> Answer:
        try:
            process = await conn.create_process(self.request.command(), encoding=None)
        except (OSError, asyncssh.Error) as exc:
            raise TransferError(
                f"the server {self.server.host} did not accept the upload request ({exc}); "
                "nothing was sent"
            ) from exc
        try:
            stopped = await _stream(process, pack, progress)
        except DittoheadError:
            # A local file changed or vanished: close without the manifest, so the receiver
            # sees an incomplete upload and stores nothing.
            process.close()
            raise
        if stopped is None:
            # The client's own work before the receipt, done while the receiver checks (it
            # blocks the loop, which has only the receipt to wait for).
            streamed()
        try:
            done = await process.wait()
        except (OSError, asyncssh.Error):
            return Answer(b"", b"", None)  # the channel closed without an exit status
        stdout = done.stdout if isinstance(done.stdout, bytes) else b""
        stderr = done.stderr if isinstance(done.stderr, bytes) else b""
        return Answer(stdout, stderr, done.exit_status)


async def _stream(
    process: asyncssh.SSHClientProcess[bytes], pack: Pack, progress: Progress | None
) -> BaseException | None:
    """Write the whole pack; return the transport error that stopped it, if any."""
    try:
        # Reading files here blocks the event loop, which is fine: the loop has nothing else
        # to do, and drain() lets asyncssh flush whenever the SSH window is full.
        for chunk in pack:
            process.stdin.write(chunk)
            await process.stdin.drain()
            if progress is not None:
                progress(pack.bytes_done, pack.total_bytes)
        process.stdin.write_eof()
        # Until the last byte is out: the caller may then block the loop (`streamed`).
        process.channel.set_write_buffer_limits(0, 0)
        await process.stdin.drain()
    except (OSError, asyncssh.Error) as exc:
        return exc  # the server stopped reading; its exit status says why
    return None
