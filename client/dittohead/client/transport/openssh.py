"""OpenSSH: the transport that carries an upload through the system's ``ssh`` when it can unasked.

Why: on the collector's PC, asyncssh frames and encrypts every 32 KiB packet in Python; OpenSSH's
``ssh`` does the same in C for about a quarter of the CPU. Measured over the same sshd on a
2-core machine: 20,000 small files 1.65 s → 1.33 s to the receipt, 1 GiB 3.3 s → 3.0 s
(docs/performance.md). The stream, the receipt and every check on them stay the same: `Session`
is a `transport.Transport`, and this module only replaces the pipe.

When: only where ``ssh`` can finish the whole upload without asking anybody anything, because
dittohead's own questions (is this the server's key? which password?) are asked by asyncssh
(`builtin`), in dittohead's words. So ``ssh`` runs with ``BatchMode=yes`` against
exactly one known-hosts file (the pinned ``--known-hosts`` file, else dittohead's own
trust-on-first-use file) with ``StrictHostKeyChecking=yes``: an unknown or changed host key, a
key that needs a passphrase, a server that wants a password — ``ssh`` gives up with status 255
before the receiver has run, and `transport.Unusable` sends `deliver` to asyncssh, which asks,
refuses or explains exactly as it always did. Nothing is ever sent to a server whose key is not
already trusted.

What it does not read: ``-F none`` leaves out ``~/.ssh/config`` and the system-wide file (as
asyncssh is told ``config=None``): what dittohead checks and where it connects must not depend on
a file the collector may not know exists. No agent or X11 forwarding, no port forwarding, no
TTY, no escape character, no multiplexing, no password or keyboard-interactive login.

How it connects: on POSIX, ``ssh`` takes its TCP connection from dittohead's dialer
(`dittohead.client.transport.dialer`, as ``ProxyCommand`` with ``ProxyUseFdpass``), which connects
with Nagle's algorithm off; ``ssh`` turns it off only once the session starts, and until then one
of its login messages waits ~40 ms for the server's delayed acknowledgement. Where the dialer
cannot run (Windows, a frozen build), ``ssh`` connects itself.

When: as soon as the folder scan meets the first file the server has not confirmed
(`EarlyStart`), so that connecting, logging in and the receiver's start-up (~0.2 s on a LAN)
overlap with the rest of the scan; a send with nothing new still connects to nothing.

``DITTOHEAD_SSH`` chooses the program: unset, ``ssh`` from ``PATH`` (on Windows, Windows' own
``System32\\OpenSSH\\ssh.exe`` when it is installed: `windows_ssh`); a path, that program;
``builtin``, never OpenSSH (asyncssh for everything).
"""

from __future__ import annotations

import contextlib
import logging
import ntpath
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from dittohead.client.plan.state import StrPath, user_known_hosts_file
from dittohead.client.transport import (
    CONNECT_TIMEOUT,
    KEEPALIVE_INTERVAL,
    Answer,
    Progress,
    Server,
    Unusable,
    login_name,
    server_words,
)
from dittohead.core.grammar import Request

if TYPE_CHECKING:
    # Only for its type: the stream (and tarfile with it) is loaded by `deliver`, while ssh
    # connects, not before ssh starts.
    from dittohead.client.pack import Pack

log = logging.getLogger(__name__)

ENV = "DITTOHEAD_SSH"
BUILTIN = "builtin"
#: OpenSSH's status for its own failures (connection, host key, login); the receiver never
#: exits with it (it follows sysexits.h)
SSH_FAILED = 255
#: OpenSSH's default ciphers with AES-GCM first (hardware accelerated); spelled out instead of
#: ``^aes128-gcm…``, which OpenSSH before 8.2 (still shipped with Windows 10) does not know
CIPHERS = (
    "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
    "aes128-ctr,aes192-ctr,aes256-ctr"
)
#: how much of ssh's stdout and stderr is kept (the receipt is one short line)
_KEEP = 64 << 10
#: the most of the server's standard output that is kept: a receipt is small, a status
#: answer lists every file of the newest uploads (docs/protocol.md, "status")
_KEEP_ANSWER = 256 << 20


def program() -> str | None:
    """The ``ssh`` program to try, or None (not installed, or ``DITTOHEAD_SSH=builtin``)."""
    chosen = os.environ.get(ENV, "").strip()
    if chosen == BUILTIN:
        return None
    if chosen:
        return chosen
    if os.name == "nt":
        return windows_ssh(os.environ, os.path.isfile)
    return _which("ssh")


def windows_ssh(environ: Mapping[str, str], is_file: Callable[[str], bool]) -> str | None:
    r"""Windows' own OpenSSH client, ``%SystemRoot%\System32\OpenSSH\ssh.exe`` (a feature of
    Windows 10 1809 and later, on by default), or None: then asyncssh carries the send.

    Only there, never a search of ``PATH``: Windows looks in the current folder first, and
    the ``ssh`` that is given the collector's key must not be one a folder being sent (or a
    user's download) can hold; another OpenSSH can still be chosen with ``DITTOHEAD_SSH``.
    """
    root = environ.get("SYSTEMROOT") or environ.get("SystemRoot") or ""
    if not ntpath.isabs(root) or not ntpath.splitdrive(root)[0]:
        root = r"C:\Windows"  # unset or relative: where Windows always is
    candidate = ntpath.join(root, "System32", "OpenSSH", "ssh.exe")
    return candidate if is_file(candidate) else None


def _which(name: str) -> str | None:
    """`shutil.which` for a bare program name, except that an empty ``PATH`` entry (which
    shutil reads as the current folder) is never searched: the ``ssh`` that is given the
    collector's key must not be one a folder being sent can hold (POSIX; Windows:
    `windows_ssh`)."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if not folder:
            continue
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def start(server: Server, request: Request) -> Session | None:
    """OpenSSH's ssh running the upload's exec request, or None when it cannot be used.

    Called by `EarlyStart` as soon as the scan meets a file the server has not confirmed.
    """
    chosen = program()
    if chosen is None:
        return None
    try:
        return Session(chosen, server, request)
    except Unusable as exc:
        log.info("OpenSSH cannot send (%s); dittohead's own SSH client will", exc)
        return None


def known_hosts_file(server: Server) -> StrPath:
    """The one file whose keys ``ssh`` may accept: the pinned one, else dittohead's own."""
    return server.known_hosts if server.known_hosts is not None else user_known_hosts_file()


#: what no ``-o`` value can hold: ssh reads each as one line of its configuration
_UNWRITABLE = "\0\n\r"


def config_path(path: StrPath) -> str:
    """`path` as ssh reads it back from a file option: file options go through ``%`` token
    expansion (``%%`` is a ``%``); quote the result with `_quoted` (``-o`` values are split at
    spaces). Unusable for the rare path that cannot be written so (a ``${`` would be expanded
    from the environment)."""
    text = os.fspath(path)
    if "${" in text or any(c in text for c in _UNWRITABLE):
        raise Unusable(f"{text!r} cannot be given to ssh")
    return text.replace("%", "%%")


def _quoted(text: str) -> str:
    """One ``-o`` value: in quotes, a backslash escaping a quote or a backslash."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sh_quoted(text: str) -> str:
    """`text` as one word for a POSIX shell, always in quotes."""
    return "'" + text.replace("'", "'\"'\"'") + "'"


def dialer_command() -> str | None:
    """The ``ProxyCommand`` that runs `dittohead.client.transport.dialer` with this Python, or None
    where ``ssh`` connects by itself: Windows (its OpenSSH has no ``ProxyUseFdpass``), a client that
    is not a Python running this module's files (a frozen build), or a path no shell word or
    ssh option can hold. ssh runs it with ``/bin/sh -c "exec …"`` (`Session` sets ``SHELL``)
    after expanding ``%`` tokens, so each word is quoted for sh and every ``%`` doubled."""
    if os.name != "posix" or getattr(sys, "frozen", False) or not sys.executable:
        return None
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dialer.py")
    words = (sys.executable, "-I", "-S", script)
    if any(c in word for word in words for c in _UNWRITABLE) or not os.path.isfile(script):
        return None
    return " ".join(map(_sh_quoted, words)).replace("%", "%%")


def ssh_argv(
    program: str,
    server: Server,
    request: Request,
    known_hosts: StrPath,
    dialing: str | None = None,
) -> list[str]:
    """The ``ssh`` command line for one upload (no shell ever sees it); with `dialing`
    (`dialer_command`), ssh takes its connection from the dialer."""
    argv = [
        program,
        "-F", "none",
        "-T",
        "-e", "none",
        "-p", str(server.port),
        "-l", server.user or login_name(),
        "-c", CIPHERS,
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={_quoted(config_path(known_hosts))}",
        "-o", f"GlobalKnownHostsFile={os.devnull}",
        "-o", "CheckHostIP=no",
        "-o", "UpdateHostKeys=no",
        "-o", "VerifyHostKeyDNS=no",
        "-o", "PreferredAuthentications=publickey",
        "-o", "PasswordAuthentication=no",
        "-o", "KbdInteractiveAuthentication=no",
        "-o", "HostbasedAuthentication=no",
        "-o", "ForwardAgent=no",
        "-o", "ForwardX11=no",
        "-o", "ClearAllForwardings=yes",
        "-o", "PermitLocalCommand=no",
        "-o", "ControlMaster=no",
        "-o", "ControlPath=none",
        "-o", "Compression=no",
        "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
        "-o", f"ServerAliveInterval={KEEPALIVE_INTERVAL}",
        "-o", "ServerAliveCountMax=3",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip
    if dialing is not None:
        # The dialer connects and hands the connection to ssh (`dittohead.client.transport.dialer`).
        argv += ["-o", "ProxyUseFdpass=yes", "-o", f"ProxyCommand={dialing}"]
    if server.identity is not None:
        # Only the key that was asked for, as with asyncssh (no agent, no ~/.ssh/id_* keys).
        # (As an option, not "-i": ssh looks a -i path up before expanding its %%.)
        key = _quoted(config_path(server.identity))
        argv += ["-o", f"IdentityFile={key}", "-o", "IdentitiesOnly=yes"]
        argv += ["-o", "IdentityAgent=none"]
    # "--": a host name can never be read as an option (say "-oProxyCommand=…").
    return [*argv, "--", server.host, request.command()]


class _Drain(threading.Thread):
    """Reads one of ssh's output pipes to its end, keeping the first `_KEEP` bytes.

    Both pipes are always read, so ssh never blocks on a full pipe while the upload is written
    into its stdin (which would hang both sides).
    """

    def __init__(self, pipe: int, keep: int = _KEEP) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.keep = keep
        self.data = bytearray()

    def run(self) -> None:
        keep = self.keep
        while chunk := os.read(self.pipe, 65536):
            if len(self.data) < keep:
                self.data += chunk[: keep - len(self.data)]


#: the size asked for the pipe into ssh's stdin (Linux; unprivileged processes may ask for up
#: to /proc/sys/fs/pipe-max-size, 1 MiB by default)
PIPE_SIZE = 1 << 20

#: seconds ssh's output is still read after ssh ended before the client goes on without it
DRAIN_GRACE = 2.0


def _widen_pipe(fd: int) -> None:
    """Give the pipe into ssh room for several chunks of the stream (Linux only).

    With the default 64 KiB every 256 KiB chunk put the client to sleep until ssh had read
    most of it, and woke ssh for each part. Measured streaming 20,000 small files into
    ``ssh … 'cat > /dev/null'``, 12 runs each, medians: the client's context switches
    3,714 → 612, its CPU 0.39 → 0.37 s, ssh's CPU 0.21 → 0.19 s; in whole sends to the real
    receiver (14 each) client and ssh together 0.76 → 0.74 CPU-s. Best effort: a refusal
    (a user over the kernel's pipe memory limit) leaves the pipe as it was.
    """
    if sys.platform != "linux":
        return
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


class Session:
    """One running ``ssh`` with the upload's exec request, waiting for the stream on its stdin
    (a `transport.Transport`).

    Started as soon as there is something to send (`EarlyStart`), so that connecting, logging
    in and the receiver's own start-up overlap with the rest of the folder scan.
    """

    def __init__(self, program: str, server: Server, request: Request) -> None:
        known = known_hosts_file(server)
        if not os.path.isfile(known):
            raise Unusable(f"no known-hosts file yet ({known})")
        self.program = program
        self.server = server
        self.request = request
        dialing = dialer_command()
        argv = ssh_argv(program, server, request, known, dialing)
        env = None
        if dialing is not None:
            # Imported here: the dialer is built on `posix`, which Windows has not (and there
            # `dialer_command` is None).
            from dittohead.client.transport import dialer

            # Where the dialer connects, out of any shell's reach; and the shell ssh runs it
            # with (ssh takes $SHELL, which may be one whose quoting differs).
            env = {
                **os.environ,
                "SHELL": "/bin/sh",
                dialer.HOST: server.host,
                dialer.PORT: str(server.port),
                dialer.TIMEOUT: str(CONNECT_TIMEOUT),
            }
        log.debug("running %s", " ".join(argv))
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                env=env,
            )
        except OSError as exc:
            raise Unusable(f"cannot run {program}: {exc}") from exc
        self.started = time.monotonic()
        assert self.proc.stdin is not None
        _widen_pipe(self.proc.stdin.fileno())
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.drains = (
            _Drain(self.proc.stdout.fileno(), _KEEP_ANSWER),
            _Drain(self.proc.stderr.fileno()),
        )
        for drain in self.drains:
            drain.start()

    def age(self) -> float:
        return time.monotonic() - self.started

    def abandon(self) -> None:
        """Stop ssh before the stream is complete: the receiver stores nothing.

        Its stdin is closed first: a process ssh started (a ProxyCommand, or a wrapper
        script's child) that still reads it then ends too. One that keeps ssh's output open
        regardless is given `DRAIN_GRACE` seconds and then left to itself, so that the client
        never waits on it.
        """
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        self.proc.kill()
        self._finish()

    def _finish(self) -> int:
        """ssh's exit status, once it has ended (its stdin is closed already) and its output
        has been read; the output pipes are closed."""
        status = self.proc.wait()
        for drain in self.drains:
            # What ssh wrote before it ended is read at once; only a process it left behind
            # can hold the pipe open longer.
            drain.join(DRAIN_GRACE)
        for pipe, drain in zip((self.proc.stdout, self.proc.stderr), self.drains, strict=True):
            if pipe is not None and not drain.is_alive():
                pipe.close()  # a pipe still being read is left open to its reader
        return status

    def carry(
        self, pack: Pack, *, progress: Progress | None, streamed: Callable[[], None]
    ) -> Answer:
        """Send `pack` and return the server's answer (see `transport.Transport.carry`).

        Raises `Unusable` when ssh itself gave up before the receiver said anything (`deliver`
        then uses asyncssh), or `LocalFileError` when a file changed while it was read (ssh is
        stopped first, so the receiver sees a stream without its manifest and stores nothing).
        """
        assert self.proc.stdin is not None
        try:
            complete = _stream(self.proc.stdin.fileno(), pack, progress)
            self.proc.stdin.close()
        except BaseException:
            # A local file changed (LocalFileError), Ctrl-C, anything: end ssh without sending
            # the rest, so that the receiver sees an incomplete upload and stores nothing.
            self.abandon()
            raise
        if complete:
            try:
                streamed()
            except BaseException:
                self.abandon()  # Ctrl-C before the receipt: no ssh is left behind
                raise
        return self._answer()

    def ask(self) -> Answer:
        """Run the request with nothing on its standard input (a question such as ``dittohead
        status``, not an upload) and return the server's answer; `Unusable` as `carry`."""
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        return self._answer()

    def _answer(self) -> Answer:
        status = self._finish()
        stdout, stderr = bytes(self.drains[0].data), bytes(self.drains[1].data)
        if status == SSH_FAILED and not server_words(stderr):
            # ssh's own failure: an unknown or changed host key, no usable key, no connection.
            # The receiver did not get to say anything; asyncssh tries again and explains.
            lines = stderr.decode("utf-8", "replace").strip().splitlines()
            # The dialer's line says why, ssh's last ("proxy dialer did not pass back…") only
            # that it gave up.
            lines = [line for line in lines if line.startswith("dialer: ")] or lines
            raise Unusable(lines[-1] if lines else f"{self.program} exited with status {status}")
        return Answer(stdout, stderr, status)


def _stream(fd: int, pack: Pack, progress: Progress | None) -> bool:
    """Write the whole pack into ssh's stdin (True); stop quietly when ssh stops reading.

    When the server refuses early (say, the collector may not upload to this study) the
    receiver exits, ssh follows and the pipe breaks: its exit status and the server's words,
    read afterwards, are what the collector is told. (Errors reading the collector's own files
    come from `pack` as `LocalFileError` and are not caught here.)
    """
    # Until ssh first takes a full pipe (it sets up its session, ~0.15 s, and the receiver
    # starts), the pipe is written without blocking, and each time it is full the pack reads
    # and hashes a file ahead (`Pack.hash_ahead`) instead of waiting. From then on, or when
    # nothing is left to read ahead, it waits in write as before: reading ahead while the
    # stream flows only takes CPU from ssh, sshd and the receiver (measured: no gain). POSIX
    # only: Python 3.11 cannot make a pipe non-blocking on Windows.
    ahead = os.name == "posix"
    waited = False
    if ahead:
        os.set_blocking(fd, False)
    for chunk in pack:
        view = memoryview(chunk)
        try:
            while view:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    waited = True
                    if not pack.hash_ahead():  # nothing left to read ahead
                        ahead = False
                        os.set_blocking(fd, True)
                    continue
                if ahead and waited:  # ssh has begun to read: the stream flows
                    ahead = False
                    os.set_blocking(fd, True)
        except OSError as exc:  # EPIPE; EINVAL on Windows
            log.debug("ssh stopped reading: %s", exc)
            return False
        if progress is not None:
            progress(pack.bytes_done, pack.total_bytes)
    return True


#: An ssh started early is used only if the stream begins within this many seconds; after a
#: long scan it is replaced by a fresh one, far from the receiver's stall_timeout.
EARLY_MAX_AGE = 10.0


class EarlyStart:
    """Starts ``ssh`` for one upload when called (`job.prepare`'s `on_new`, at the scan's first
    new file), so that connecting, logging in and the receiver's start-up overlap with the rest
    of the scan; `deliver.run` takes it over."""

    def __init__(self, server: Server, request: Request) -> None:
        self.server = server
        self.request = request
        self.session: Session | None = None
        self.tried = False

    def __call__(self) -> None:
        self.tried = True
        self.session = start(self.server, self.request)

    def take(self) -> Session | None:
        """The ssh for the upload: the one started early, or a new one when none was tried
        yet or it waited too long (then it is stopped); None when OpenSSH cannot be used."""
        session: Session | None
        session, self.session = self.session, None
        if session is not None and session.age() > EARLY_MAX_AGE:
            session.abandon()
            session, self.tried = None, False
        if session is None and not self.tried:
            self()
            session, self.session = self.session, None
        return session

    def close(self) -> None:
        """Stop an ssh that was started but not used (the scan failed, say)."""
        if self.session is not None:
            self.session.abandon()
            self.session = None
