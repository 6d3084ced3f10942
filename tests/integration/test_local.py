"""The same scenario, fast: the in-process SSH server standing in for sshd + ForceCommand, the
real client and receiver processes, the processor in-process; and the installed entry points
through ``dittohead-admin demo``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest

from dittohead.receiver.admin.history_cmd import LEGEND
from dittohead.receiver.admin.localserver import LocalServer
from dittohead.receiver.processor.finalize import run_once
from tests.support.server import STUDY, Server, make_server

CLIENT = "import sys; from dittohead.client.cli import main; sys.exit(main())"


class Local:
    def __init__(self, server: Server, tmp: Path) -> None:
        self.server = server
        self.tmp = tmp
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.key_path = tmp / "id"
        self.client_key.write_private_key(self.key_path)
        self.key_path.chmod(0o600)
        self.known = tmp / "known_hosts"

    async def start(self) -> LocalServer:
        srv = LocalServer(
            self.server.config_path, self.host_key, [self.client_key.convert_to_public()]
        )
        await srv.start()
        pin = self.host_key.export_public_key("openssh").decode().strip()
        self.known.write_text(f"[127.0.0.1]:{srv.port} {pin}\n")
        return srv

    async def send(self, srv: LocalServer, folder: Path, *extra: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-c", CLIENT, "send", "--host", "127.0.0.1",
            "--port", str(srv.port), "--user", "collector", "--identity", str(self.key_path),
            "--known-hosts", str(self.known), "--state", str(self.tmp / "state.json"),
            "--study", STUDY, "--source", "brogden-a", "--json", *extra, str(folder),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def local(tmp_path: Path) -> Local:
    return Local(make_server(tmp_path / "srv"), tmp_path)


def sample(folder: Path) -> Path:
    for rel, data in {
        "eprime/s01.txt": b"subject 1\n",
        "eprime/s01.edat2": bytes(range(256)) * 100,
        "eyetracker/s01.edf": b"\x01" * 70_000,
        "biopac/Ünïcode naïve.acq": b"\x02" * 1000,
    }.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def test_send_process_resend(local: Local, tmp_path: Path) -> None:
    folder = sample(tmp_path / "pc")
    dest = local.server.destination

    async def scenario() -> None:
        srv = await local.start()
        try:
            rc, out, err = await local.send(srv, folder)
            assert rc == 0, err
            assert json.loads(out)["files"] == 4
            summary = run_once(local.server.config)
            assert (summary.entries, summary.stored) == (1, 4)
            assert (dest / "biopac/Ünïcode naïve.acq").read_bytes() == b"\x02" * 1000

            (folder / "eprime/s01.txt").write_bytes(b"subject 1, fixed\n")
            rc, out, err = await local.send(srv, folder)
            assert rc == 0, err
            assert json.loads(out)["files"] == 1
            run_once(local.server.config)
            assert (dest / "eprime/s01.txt").read_bytes() == b"subject 1\n"
            assert (dest / "eprime/s01~2.txt").read_bytes() == b"subject 1, fixed\n"

            rc, out, err = await local.send(srv, folder)
            assert rc == 0, err
            assert json.loads(out).get("nothing_to_send") is True
        finally:
            await srv.close()

    asyncio.run(scenario())


def test_a_refused_upload_leaves_nothing(local: Local, tmp_path: Path) -> None:
    folder = sample(tmp_path / "pc")
    # The study exists for the client, not for this server: the receiver says so in one line.
    config = local.server.config_path
    config.write_text(config.read_text().replace(f"{STUDY}:", "otherstudy:"))

    async def scenario() -> tuple[int, str, str]:
        srv = await local.start()
        try:
            return await local.send(srv, folder)
        finally:
            await srv.close()

    rc, _out, err = asyncio.run(scenario())
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dittohead: "), err
    assert f"no study '{STUDY}'" in lines[0]
    assert list(local.server.inbox.iterdir()) == []


def test_the_demo_runs_through_the_installed_entry_point() -> None:
    demo = Path(sys.executable).parent / "dittohead-admin"
    done = subprocess.run([str(demo), "demo"], capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "eprime/s01_session1~2.txt" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    # The demo's history is the real command's format (the same function prints both).
    assert f"   {LEGEND}\n   upload brogden-a-" in done.stdout
    assert "     + eprime/s01_session1.txt  → eprime/s01_session1~2.txt" in done.stdout
