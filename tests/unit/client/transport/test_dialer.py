"""The dialer ``ssh`` takes its connection from (`dittohead.client.transport.dialer`).

Each test runs the dialer as ``ssh`` does: a separate ``python -I -S`` process whose standard
input and output are one end of a Unix socket pair, with where to connect in its environment,
against a real TCP listener on 127.0.0.1. The other end of the pair is read as ``ssh`` reads it
(one byte with a descriptor attached).
"""

from __future__ import annotations

import array
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dittohead.client.transport import dialer

pytestmark = pytest.mark.skipif(os.name != "posix", reason="ssh takes a dialer's socket on POSIX")

DIALER = Path(dialer.__file__)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def start_dialer(channel: socket.socket, port: object, timeout: str = "5") -> subprocess.Popen[str]:
    """The dialer as ssh starts it: standard input and output `channel` (its end of the pair),
    where to connect in its environment."""
    env = {dialer.HOST: "127.0.0.1", dialer.PORT: str(port), dialer.TIMEOUT: timeout}
    return subprocess.Popen(
        [sys.executable, "-I", "-S", str(DIALER)],
        stdin=channel.fileno(), stdout=channel.fileno(), stderr=subprocess.PIPE, env=env,
        text=True,
    )  # fmt: skip


def run_dialer(port: object, timeout: str = "5") -> tuple[subprocess.CompletedProcess[str], int]:
    """Run the dialer as ssh does; its exit and the descriptor it passed (-1 if none)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        proc = start_dialer(theirs, port, timeout)
        _, stderr = proc.communicate(timeout=30)
        theirs.close()
        fds = array.array("i")
        data, ancillary, _, _ = ours.recvmsg(1, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, payload in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                fds.frombytes(payload[: fds.itemsize])
        assert data == (b"\0" if fds else b"")
        done = subprocess.CompletedProcess(proc.args, proc.returncode, None, stderr)
        return done, (fds[0] if fds else -1)


def test_the_dialer_hands_over_a_connection_with_nagle_off(listener: socket.socket) -> None:
    done, fd = run_dialer(listener.getsockname()[1])
    assert (done.returncode, done.stderr) == (0, "")
    with socket.socket(fileno=fd) as conn:
        assert conn.getpeername() == listener.getsockname()
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
        assert conn.getblocking()  # as a socket ssh connected itself
        accepted, _ = listener.accept()
        with accepted:
            conn.sendall(b"SSH-2.0-test\r\n")
            assert accepted.recv(64) == b"SSH-2.0-test\r\n"


def test_a_refused_connection_is_one_line_and_nothing_passed(listener: socket.socket) -> None:
    port = str(listener.getsockname()[1])
    listener.close()  # nothing listens there any more
    done, fd = run_dialer(port)
    assert (done.returncode, fd) == (1, -1)
    assert done.stderr.splitlines() == [
        f"dialer: cannot connect to 127.0.0.1 port {port}: Connection refused"
    ]
    # ssh passes this on; it must never read as the receiver's own "dittohead: …" line
    assert not done.stderr.startswith("dittohead:")


def test_a_port_that_is_no_number_is_one_line() -> None:
    done, fd = run_dialer("ssh")
    assert (done.returncode, fd) == (1, -1)
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("dialer: cannot connect to 127.0.0.1 port ssh: ")


def imported(*command: str) -> set[str]:
    """The modules a ``python -I -S -X importtime`` run of `command` imports."""
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-X", "importtime", *command],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[1].strip() for line in lines[1:]}  # [0] is the header


def test_the_dialer_loads_no_more_than_it_needs() -> None:
    # ~6 ms to start with -S; `socket` (enum, selectors) or site packages would add to every
    # send's start.
    assert imported(str(DIALER)) - imported("-c", "pass") == {"_socket"}


def test_an_ssh_gone_before_the_hand_over_is_one_line(listener: socket.socket) -> None:
    ours, theirs = socket.socketpair()
    ours.close()  # ssh was stopped while the dialer connected
    with theirs:
        proc = start_dialer(theirs, listener.getsockname()[1])
        _, stderr = proc.communicate(timeout=30)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, None, stderr)
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["dialer: cannot hand the connection to ssh: Broken pipe"]


@pytest.fixture
def unanswered() -> Iterator[int]:
    """A port whose listener never answers: its accept queue is full, so the kernel drops
    every further connection request and a connect waits until it times out."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        queued = []
        try:
            for _ in range(8):  # fill the queue (its length is the kernel's to round up)
                client = socket.socket()
                client.setblocking(False)
                queued.append(client)
                if client.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
                    break
            yield port
        finally:
            for client in queued:
                client.close()


def test_a_server_that_never_answers_times_out_in_one_line(unanswered: int) -> None:
    started = time.monotonic()
    done, _ = run_dialer(unanswered, timeout="0.5")
    assert time.monotonic() - started < 10
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"dialer: cannot connect to 127.0.0.1 port {unanswered}: timed out"
    ]


def test_ctrl_c_while_connecting_ends_the_dialer_quietly(unanswered: int) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        proc = start_dialer(theirs, unanswered, timeout="30")
        time.sleep(0.5)  # it is waiting in connect by now
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    assert (proc.returncode, stderr) == (130, "")
