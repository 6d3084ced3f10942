"""Send: one SSH connection, one exec request, the pack streamed in, the receipt checked.

This module is dittohead's own SSH client (asyncssh), and the client's programmatic interface
(`send_folder`, `run`). `deliver.run` first offers each upload to OpenSSH's ``ssh``
(`openssh`), which carries it when it can without asking anything; everything else comes here.

The whole upload is a single ``dittohead upload v1 <study> <source>`` exec request whose stdin
is the tar stream from `pack` (per-file round trips are ruinous, PERF.md). The server answers
with one JSON receipt on stdout, or one ``dittohead: …`` line on stderr and a non-zero status.
The receipt must agree with what was sent (files, bytes, sha256 of the manifest) before the
state file may record anything: an upload the server did not confirm is sent again next time.

Connection settings, and why:

* host keys are decided by `hostkeys.HostKeyPolicy` during the key exchange, before any
  password is sent (``known_hosts=([], [], [])`` makes asyncssh ask us about every key);
* AES-GCM first (asyncssh would pick chacha20-poly1305, ~40% slower here), compression off
  (it costs 10x on the random-looking data instruments produce);
* ``~/.ssh/config`` is not read (``config=None``): what dittohead checks and how it connects
  must not depend on a file the collector may not know exists;
* at most three password tries, then a clear "could not log in" (see `login`).

Only the CLI prints: prompts go through the callables in `Prompts`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.encryption import get_default_encryption_algs

from dittohead.client.deliver import run
from dittohead.client.hostkeys import HostKeyPolicy
from dittohead.client.job import (
    CONNECT_TIMEOUT,
    DEFAULT_PORT,
    KEEPALIVE_INTERVAL,
    Job,
    Prompts,
    Server,
    login_name,
    prepare,
)
from dittohead.client.login import LoginClient, connect_failure, load_identity
from dittohead.client.pack import Pack
from dittohead.client.reply import (
    Progress,
    Sent,
    ServerRefused,
    check_receipt,
    parse_receipt,
    server_failure,
)
from dittohead.core import logs
from dittohead.core.errors import DittoheadError, TransferError
from dittohead.core.grammar import UploadRequest
from dittohead.core.receipt import Receipt

# This module is the client's programmatic interface. Planning lives in `job` (free of
# asyncssh, so that a send with nothing new starts fast) and is re-exported from here.
__all__ = [
    "Job",
    "Progress",
    "Prompts",
    "Server",
    "ServerRefused",
    "check_receipt",
    "cipher_preference",
    "parse_receipt",
    "prepare",
    "run",
    "send_folder",
    "server_failure",
    "upload",
]

log = logs.getLogger(__name__)

PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def cipher_preference() -> list[str]:
    """AES-GCM first (hardware accelerated), then the rest of asyncssh's defaults."""
    rest = [alg.decode("ascii") for alg in get_default_encryption_algs()]
    return list(dict.fromkeys([*PREFERRED_CIPHERS, *rest]))


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


async def upload(
    server: Server,
    request: UploadRequest,
    pack: Pack,
    *,
    prompts: Prompts | None = None,
    progress: Progress | None = None,
    streamed: Callable[[], None] | None = None,
) -> Receipt:
    """Send `pack` as one upload and return the server's checked receipt.

    `streamed` is called once the whole stream has been handed to the connection, while the
    receiver checks it (the client's own work that may come before the receipt: `deliver`).
    """
    prompts = prompts or Prompts()
    user = server.user or login_name()
    pinned = None if server.known_hosts is None else Path(server.known_hosts)
    policy = HostKeyPolicy(server.host, server.port, pinned=pinned, ask=prompts.trust)
    client = LoginClient(policy, f"{user}@{server.host}", prompts.password)
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
    if server.identity is not None:
        options["client_keys"] = [load_identity(Path(server.identity), prompts.passphrase)]
        options["agent_path"] = None  # only the key that was asked for
    try:
        conn = await asyncssh.connect(server.host, **options)
    except (OSError, asyncssh.Error) as exc:
        raise connect_failure(exc, server.host, server.port, user, client) from exc
    try:
        return await _session(
            conn, server, user, request, pack=pack, progress=progress, streamed=streamed
        )
    finally:
        conn.close()
        await conn.wait_closed()


async def _session(
    conn: asyncssh.SSHClientConnection,
    server: Server,
    user: str,
    request: UploadRequest,
    *,
    pack: Pack,
    progress: Progress | None,
    streamed: Callable[[], None] | None,
) -> Receipt:
    log.info(
        "connected to %s as %s (cipher %s)",
        server.host,
        user,
        conn.get_extra_info("send_cipher"),
    )
    try:
        process = await conn.create_process(request.command(), encoding=None)
    except (OSError, asyncssh.Error) as exc:
        raise TransferError(
            f"the server {server.host} did not accept the upload request ({exc}); nothing was sent"
        ) from exc
    try:
        stopped = await _stream(process, pack, progress)
    except DittoheadError:
        # A local file changed or vanished: close without the manifest, so the receiver
        # sees an incomplete upload and stores nothing.
        process.close()
        raise
    sent = None
    if stopped is None:
        # The client's own work before the receipt, done while the receiver checks (it blocks
        # the loop, which has only the receipt to wait for).
        sent = Sent.of(pack)
        if streamed is not None:
            streamed()
    try:
        done = await process.wait()
    except (OSError, asyncssh.Error) as exc:
        raise server_failure(None, b"", server.host) from exc
    status = done.exit_status
    if status != 0 or sent is None:
        stderr = done.stderr if isinstance(done.stderr, bytes) else b""
        raise server_failure(status if status != 0 else None, stderr, server.host)
    stdout = done.stdout if isinstance(done.stdout, bytes) else b""
    receipt = parse_receipt(stdout)
    check_receipt(receipt, sent, request, server.host)
    return receipt


def send_folder(
    host: str,
    *,
    study: str,
    source: str,
    folder: str | Path,
    things: Sequence[str] = (),
    port: int = DEFAULT_PORT,
    user: str | None = None,
    identity: Path | None = None,
    known_hosts: Path | None = None,
    state: Path | None = None,
    prompts: Prompts | None = None,
    progress: Progress | None = None,
) -> Receipt | None:
    """Send what is new or changed in `folder` (or its `things`); None if nothing was new.

    Without `known_hosts` and without a `prompts.trust`, an unknown server is refused: a
    program calling this cannot ask anyone, so pin the key (or trust it once in a terminal).
    """
    job = prepare(
        Server(host, port, user, identity, known_hosts),
        study=study,
        source=source,
        folder=folder,
        things=things,
        state=state,
    )
    if not job.selected.files:
        return None
    return run(job, prompts=prompts, progress=progress)
