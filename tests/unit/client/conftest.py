"""Fixtures for the client tests: an isolated home, a folder builder, and a real SSH server.

The server is asyncssh, in-process, on 127.0.0.1 port 0, running in its own thread and event
loop so that the client under test can run exactly as a collector runs it (``cli.main`` calls
``asyncio.run`` itself). Its receiver reads the whole tar stream, parses it with the standard
``tarfile`` module in stream mode, checks every file against the manifest and answers with a
`Receipt` — or misbehaves on purpose (refuses, lies, exits early) when a test asks it to.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import pytest

from dittohead.client import presets
from dittohead.core.grammar import parse_command
from dittohead.core.manifest import MANIFEST_PATH, parse_manifest
from dittohead.core.receipt import Receipt

T = TypeVar("T")

USER = "alice"
STUDY, SOURCE = "nccam3", "brogden-a"
FILES = {"eprime/s01.txt": b"one", "eprime/s02.txt": b"two" * 1000, "biopac/r.acq": b"\x00\xff"}


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real ~/.ssh keys, agent, ssh config or state can leak into (or out of) a test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    monkeypatch.setenv("USER", USER)
    monkeypatch.setenv("LOGNAME", USER)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("DITTOHEAD_HOST", raising=False)
    # No client.toml of this machine or of whoever runs the tests.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("DITTOHEAD_CONFIG", raising=False)
    monkeypatch.delenv("DITTOHEAD_BATCH", raising=False)
    monkeypatch.setattr(presets, "machine_file", lambda: str(tmp_path / "no-machine.toml"))
    return home


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@dataclass
class Upload:
    """What the fake receiver got in one exec request."""

    command: str
    user: str
    members: list[tuple[str, str]]  # (name, "dir" | "file")
    files: dict[str, bytes]
    manifest: bytes
    problems: list[str]


@dataclass
class FakeReceiver:
    """Settings and records of the in-process SSH server (read them after the client ran)."""

    host_key: asyncssh.SSHKey
    passwords: dict[str, str] = field(default_factory=dict)
    authorized: dict[str, list[asyncssh.SSHKey]] = field(default_factory=dict)
    mode: str = "ok"  # ok | fail | lie | early | noise
    fail_status: int = 65
    fail_line: str = "dittohead: the upload is larger than this server accepts; nothing was stored"
    port: int = 0
    password_attempts: list[tuple[str, str]] = field(default_factory=list)
    connections: list[dict[str, Any]] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    finished: threading.Event = field(default_factory=threading.Event)
    #: polled (up to 5 s) after the whole stream was read, before answering: a test's
    #: condition on what the client does while it waits for the receipt; True if it was met
    hold: Callable[[], bool] | None = None
    held: list[bool] = field(default_factory=list)

    host = "127.0.0.1"

    def wait_for_upload(self) -> Upload:
        """The first upload, once the receiver has finished reading it (it runs in a thread)."""
        assert self.finished.wait(timeout=10), "the receiver never finished reading"
        return self.uploads[0]

    @property
    def public_key(self) -> asyncssh.SSHKey:
        return self.host_key.convert_to_public()

    def known_hosts_line(self, key: asyncssh.SSHKey | None = None) -> str:
        key = key or self.public_key
        return f"[{self.host}]:{self.port} {key.export_public_key().decode().strip()}\n"

    # -- the receiver -----------------------------------------------------------------------

    async def handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        conn = process.get_extra_info("connection")
        user = conn.get_extra_info("username")
        command = process.command or ""
        if self.mode == "early":
            # Refuse without reading stdin, as a receiver does for a study you may not use.
            process.stderr.write(f"{self.fail_line}\n".encode())
            process.exit(self.fail_status)
            return
        try:
            data = await process.stdin.read()
        except (OSError, asyncssh.Error) as exc:
            self.uploads.append(Upload(command, user, [], {}, b"", [f"connection lost ({exc})"]))
            self.finished.set()
            return
        upload = self.parse(command, user, data)
        self.uploads.append(upload)
        self.finished.set()
        if self.mode == "fail" or upload.problems:
            line = self.fail_line if not upload.problems else f"dittohead: {upload.problems[0]}"
            process.stderr.write(f"login noise\n{line}\n".encode())
            process.exit(self.fail_status)
            return
        if self.hold is not None:
            for _ in range(500):
                if self.hold():
                    self.held.append(True)
                    break
                await asyncio.sleep(0.01)
            else:
                self.held.append(False)
        request = parse_command(command)
        manifest = parse_manifest(upload.manifest)
        receipt = Receipt(
            upload=f"{request.source}-20260101T000000Z-{len(self.uploads):04d}",
            study=request.study,
            source=request.source,
            user=user,
            files=manifest.file_count + (1 if self.mode == "lie" else 0),
            bytes=manifest.byte_count,
            manifest_sha256=hashlib.sha256(upload.manifest).hexdigest(),
            received_at="2026-01-01T00:00:00Z",
        )
        if self.mode == "noise":
            process.stdout.write(b"Welcome to the lab server!\n")
        process.stdout.write(receipt.to_json().encode() + b"\n")
        process.exit(0)

    @staticmethod
    def parse(command: str, user: str, data: bytes) -> Upload:
        members: list[tuple[str, str]] = []
        files: dict[str, bytes] = {}
        manifest = b""
        problems: list[str] = []
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
                for info in tar:
                    if manifest:
                        problems.append(f"member {info.name!r} after the manifest")
                    if info.isdir():
                        members.append((info.name, "dir"))
                        continue
                    if not info.isreg():
                        problems.append(f"{info.name!r} is not a file or folder")
                        continue
                    handle = tar.extractfile(info)
                    assert handle is not None
                    content = handle.read()
                    if info.name == MANIFEST_PATH:
                        manifest = content
                        continue
                    members.append((info.name, "file"))
                    files[info.name] = content
        except tarfile.TarError as exc:
            problems.append(f"malformed archive ({exc})")
        if not manifest:
            problems.append("incomplete upload (no manifest)")
        else:
            entries = json.loads(manifest)["entries"]
            listed = {e["path"]: e for e in entries}
            if set(listed) != set(files):
                problems.append("manifest and files differ")
            for path, content in files.items():
                entry = listed.get(path)
                if entry is None or entry["size"] != len(content):
                    problems.append(f"{path}: wrong size")
                elif entry["sha256"] != hashlib.sha256(content).hexdigest():
                    problems.append(f"{path}: wrong sha256")
        return Upload(command, user, members, files, manifest, problems)


class _SSHServer(asyncssh.SSHServer):
    def __init__(self, fake: FakeReceiver) -> None:
        self.fake = fake

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn

    def auth_completed(self) -> None:
        info = {
            name: self.conn.get_extra_info(name)
            for name in (
                "recv_cipher",
                "send_cipher",
                "recv_compression",
                "send_compression",
                "client_version",  # which SSH client carried the upload
            )
        }
        self.fake.connections.append(info)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return bool(self.fake.passwords)

    def validate_password(self, username: str, password: str) -> bool:
        self.fake.password_attempts.append((username, password))
        return self.fake.passwords.get(username) == password

    def public_key_auth_supported(self) -> bool:
        return bool(self.fake.authorized)

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return key in self.fake.authorized.get(username, [])


class LoopThread:
    """An event loop in a daemon thread, for servers the client under test talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture(scope="session")
def host_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture(scope="session")
def client_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


MakeServer = Callable[..., FakeReceiver]


@pytest.fixture
def make_server(loop_thread: LoopThread, host_key: asyncssh.SSHKey) -> Iterator[MakeServer]:
    """Start fake receivers: ``make_server(passwords={...}, mode="fail", kbdint=False)``."""
    servers: list[asyncssh.SSHAcceptor] = []

    def make(
        *, kbdint: bool = True, key: asyncssh.SSHKey | None = None, **settings: Any
    ) -> FakeReceiver:
        fake = FakeReceiver(host_key=key or host_key, **settings)

        async def start() -> asyncssh.SSHAcceptor:
            return await asyncssh.create_server(
                lambda: _SSHServer(fake),
                fake.host,
                0,
                server_host_keys=[fake.host_key],
                process_factory=fake.handle,
                encoding=None,
                kbdint_auth=kbdint,
                allow_scp=False,
            )

        acceptor = loop_thread.run(start())
        servers.append(acceptor)
        fake.port = acceptor.sockets[0].getsockname()[1]
        return fake

    yield make

    async def stop(acceptor: asyncssh.SSHAcceptor) -> None:
        acceptor.close()
        await acceptor.wait_closed()

    for acceptor in servers:
        loop_thread.run(stop(acceptor))


@pytest.fixture
def identity(tmp_path: Path, client_key: asyncssh.SSHKey) -> Path:
    path = tmp_path / "id_ed25519"
    path.write_bytes(client_key.export_private_key("openssh"))
    path.chmod(0o600)
    return path


@pytest.fixture
def key_server(make_server: MakeServer, client_key: asyncssh.SSHKey) -> FakeReceiver:
    return make_server(authorized={USER: [client_key.convert_to_public()]})


def run_cli(
    server: FakeReceiver, folder: Path, *extra: str, things: tuple[str, ...] = ()
) -> list[str]:
    return [
        "send",
        "--host",
        server.host,
        "--port",
        str(server.port),
        "--study",
        STUDY,
        "--source",
        SOURCE,
        *extra,
        str(folder),
        *things,
    ]


def keyed(
    server: FakeReceiver,
    folder: Path,
    identity: Path,
    tmp_path: Path,
    *extra: str,
    things: tuple[str, ...] = (),
) -> list[str]:
    """``dittohead send`` logging in with `identity`, the server's key pinned."""
    pinned = ["--known-hosts", str(pin(server, tmp_path))]
    return run_cli(server, folder, "--identity", str(identity), *pinned, *extra, things=things)


def pin(server: FakeReceiver, tmp_path: Path, key: asyncssh.SSHKey | None = None) -> Path:
    path = tmp_path / "pinned_known_hosts"
    path.write_text(server.known_hosts_line(key))
    return path


def carried_by(server: FakeReceiver) -> list[str]:
    """Which SSH client made each logged-in connection: "OpenSSH" or "AsyncSSH"."""
    return [str(c["client_version"]).split("-")[2].split("_")[0] for c in server.connections]
