"""An in-process SSH server standing in for sshd + ForceCommand (the demo and fast tests).

It behaves like OpenSSH with ``ForceCommand dittohead-receive``: whatever the client asks for
(an exec request, a shell, a subsystem such as sftp) runs the receiver, with the requested
command in ``SSH_ORIGINAL_COMMAND`` and a minimal environment. The receiver runs as a separate
process, exactly as sshd would start it, but as the user running this server (it cannot switch
users); the real-OpenSSH test tier covers real accounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import asyncssh

log = logging.getLogger(__name__)

_RECEIVER = "from dittohead.receiver.upload.receive import entry; entry()"


class _Server(asyncssh.SSHServer):
    def __init__(self, keys: Sequence[asyncssh.SSHKey], passwords: dict[str, str]) -> None:
        self._keys = list(keys)
        self._passwords = passwords

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return bool(self._keys)

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return any(key == k for k in self._keys)

    def password_auth_supported(self) -> bool:
        return bool(self._passwords)

    def validate_password(self, username: str, password: str) -> bool:
        return self._passwords.get(username) == password


class LocalServer:
    """``async with LocalServer(config_path, host_key, [client_pub]) as srv: srv.port``"""

    def __init__(
        self,
        config_path: Path,
        host_key: asyncssh.SSHKey,
        authorized: Sequence[asyncssh.SSHKey] = (),
        passwords: dict[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.config_path = config_path
        self.host_key = host_key
        self.authorized = authorized
        self.passwords = passwords or {}
        self.python = python
        self.port = 0
        self._acceptor: asyncssh.SSHAcceptor | None = None

    async def _handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        env = {"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"}
        # ForceCommand semantics: the client's request only ever reaches us as a string.
        env["SSH_ORIGINAL_COMMAND"] = process.command or ""
        child = await asyncio.create_subprocess_exec(
            self.python,
            "-I",
            "-X",
            "utf8",
            "-c",
            _RECEIVER,
            "--config",
            str(self.config_path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert child.stdin and child.stdout and child.stderr
        child_stdin = child.stdin

        async def feed() -> None:
            # Like sshd: when the receiver stops reading (it refused the upload), the rest of
            # the client's data is discarded instead of breaking the session.
            try:
                while data := await process.stdin.read(1 << 18):
                    child_stdin.write(data)
                    await child_stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                child_stdin.close()
                # Retrieve the pipe's closing error, if any, so asyncio does not report it.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    await child_stdin.wait_closed()

        async def pump(reader: asyncio.StreamReader, writer: asyncssh.SSHWriter[bytes]) -> None:
            while data := await reader.read(1 << 16):
                writer.write(data)

        feeder = asyncio.create_task(feed())
        await asyncio.gather(pump(child.stdout, process.stdout), pump(child.stderr, process.stderr))
        status = await child.wait()
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        process.exit(status)

    async def start(self) -> int:
        self._acceptor = await asyncssh.create_server(
            lambda: _Server(self.authorized, self.passwords),
            "127.0.0.1",
            0,
            server_host_keys=[self.host_key],
            process_factory=self._handle,
            encoding=None,
            # Same preference the client uses: AES-GCM is ~1.7x faster than chacha20 here.
            encryption_algs=[
                "aes128-gcm@openssh.com",
                "aes256-gcm@openssh.com",
                "chacha20-poly1305@openssh.com",
                "aes128-ctr",
                "aes256-ctr",
            ],
            compression_algs=None,
            line_editor=False,
            allow_scp=False,
        )
        self.port = self._acceptor.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()

    async def __aenter__(self) -> LocalServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
