"""Prompts as a collector meets them: on a real terminal (a pty), and with no terminal at all.

``dittohead send`` runs as its own process here, the way a collector runs it, against the
in-process SSH server from conftest: Ctrl-C is the byte ``\\x03`` typed into the pty, which
the kernel's line discipline turns into SIGINT for the foreground process, exactly as a
terminal window does. Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import pytest

from .conftest import FILES, USER, MakeServer, pin, run_cli, write_tree

pytestmark = pytest.mark.skipif(os.name != "posix", reason="ptys are POSIX")

#: the docs promise Ctrl-C ends a send at once
AT_ONCE = 1.0


class Terminal:
    """``dittohead send …`` running on the slave side of a new pty."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "DITTOHEAD_SSH": "builtin", "PYTHONWARNINGS": "default"}
        pid, fd = os.forkpty()
        if pid == 0:  # the child: its controlling terminal is the pty
            try:
                command = [sys.executable, "-m", "dittohead.client.cli", *args]
                os.execve(sys.executable, command, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = b""

    def read_until(self, text: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"never saw {text!r}; the terminal shows {self.output!r}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # EIO: the child has gone
                    chunk = b""
                assert chunk, f"the command ended before {text!r}: {self.output!r}"
                self.output += chunk

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float) -> int | None:
        """The exit status within `timeout` seconds (reading what it prints), else None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.02)
            if ready:
                with contextlib.suppress(OSError):  # EIO: the child has gone
                    self.output += os.read(self.fd, 4096)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._drain()
                return os.waitstatus_to_exitcode(status)
        return None

    def _drain(self) -> None:
        while select.select([self.fd], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


def _ctrl_c_ends_it_at_once(term: Terminal, prompt: bytes) -> None:
    try:
        term.read_until(prompt)
        time.sleep(0.2)  # the prompt is waiting in its read
        typed = time.monotonic()
        term.type(b"\x03")
        status = term.wait(AT_ONCE)
        took = time.monotonic() - typed
        assert status is not None, (
            f"Ctrl-C did not end the send within {AT_ONCE} s: {term.output!r}"
        )
        assert status == 130, term.output
        assert took < AT_ONCE
        shown = term.output.decode("utf-8", "replace")
        assert "dittohead: interrupted; nothing was stored" in shown
        assert "Traceback" not in shown and "Error" not in shown
    finally:
        term.close()


def test_ctrl_c_at_the_trust_prompt_ends_the_send_at_once(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = make_server(passwords={USER: "pw"})
    folder = write_tree(tmp_path / "data", FILES)
    term = Terminal(run_cli(server, folder))  # the server is not known yet: it asks
    _ctrl_c_ends_it_at_once(term, b"[yes/no]")
    assert server.uploads == [] and server.password_attempts == []


def test_ctrl_c_at_the_password_prompt_ends_the_send_at_once(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = make_server(passwords={USER: "pw"})
    folder = write_tree(tmp_path / "data", FILES)
    term = Terminal(run_cli(server, folder, "--known-hosts", str(pin(server, tmp_path))))
    _ctrl_c_ends_it_at_once(term, b"Password for")
    assert server.uploads == [] and server.password_attempts == []


def test_a_password_without_a_terminal_is_one_clear_line(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = make_server(passwords={USER: "pw"})
    folder = write_tree(tmp_path / "data", FILES)
    args = run_cli(server, folder, "--known-hosts", str(pin(server, tmp_path)))
    done = subprocess.run(
        [sys.executable, "-m", "dittohead.client.cli", *args],
        # A new session has no controlling terminal (no /dev/tty), as under a scheduler or a
        # script; stdin is empty.
        start_new_session=True, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        env={**os.environ, "DITTOHEAD_SSH": "builtin", "PYTHONWARNINGS": "default"},
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 69
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"dittohead: could not log in to {server.host} as {USER}: ")
    assert "a password is needed and there is no terminal" in line
    assert "--identity" in line
    assert server.password_attempts == [] and server.uploads == []


def test_ctrl_c_at_the_passphrase_prompt_ends_the_send_at_once(
    make_server: MakeServer, tmp_path: Path
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    locked = tmp_path / "id_locked"
    # PKCS#8 encryption needs no optional package (OpenSSH-format encryption needs bcrypt)
    locked.write_bytes(key.export_private_key("pkcs8-pem", passphrase="s3cret"))
    server = make_server(authorized={USER: [key.convert_to_public()]})
    folder = write_tree(tmp_path / "data", FILES)
    pinned = ["--known-hosts", str(pin(server, tmp_path))]
    term = Terminal(run_cli(server, folder, "--identity", str(locked), *pinned))
    _ctrl_c_ends_it_at_once(term, b"Passphrase for")
    assert server.uploads == []
