"""``dittohead-processor``: the command line and the socket-activated service loop.

With ``--once`` it finalizes what is pending and exits. Without, it serves the processor socket
(handed over by systemd through ``LISTEN_FDS``, or bound from the config when started by hand):
it finalizes what is pending, then waits for a poke; each poke is only a hint to rescan (the
message is read with a small bounded buffer and never acted upon); after ``idle_timeout``
seconds without one it exits, and systemd starts it again on the next poke.

It speaks sd_notify: ``READY=1`` once the socket is in hand, ``STATUS=`` saying what it is doing
(rate-limited), ``WATCHDOG=1`` while alive and making progress, ``STOPPING=1`` on the way out.
SIGTERM stops it between two files; the journal lets the next run finish that upload.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from dittohead.core.errors import DittoheadError, describe_os_error
from dittohead.receiver.config.model import Config
from dittohead.receiver.processor.finalize import (
    Hooks,
    Stopped,
    StudiesFailed,
    Summary,
    check_kernel,
    run_once,
)
from dittohead.receiver.service_cli import run_service

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
#: the name the socket unit gives the listening socket (FileDescriptorName=)
FD_NAME = "processor"
_POKE_MAX = 64
#: STATUS= at most this often (seconds): progress is reported per file, which can be fast
_STATUS_EVERY = 1.0


class ServiceError(DittoheadError):
    """The service could not start."""

    exit_code = 71


class Notifier:
    """sd_notify through sdnotify when systemd is watching (NOTIFY_SOCKET set)."""

    def __init__(self) -> None:
        self._notifier = None
        self._lock = threading.Lock()  # the watchdog thread notifies too
        if os.environ.get("NOTIFY_SOCKET"):
            try:
                # Imported here: only the service needs it, and --once runs without it.
                import sdnotify

                self._notifier = sdnotify.SystemdNotifier()
            except ImportError:  # pragma: no cover - the receiver extra installs it
                log.warning("NOTIFY_SOCKET is set but sdnotify is not installed")

    def __call__(self, message: str) -> None:
        if self._notifier is not None:
            with self._lock:
                self._notifier.notify(message)


def _thread_io(tid: int) -> int:
    """Bytes the thread `tid` has read and written so far (0 when /proc cannot tell)."""
    try:
        text = Path(f"/proc/self/task/{tid}/io").read_text()
    except OSError:
        return 0
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return int(fields.get("rchar", 0)) + int(fields.get("wchar", 0))


class Watchdog:
    """Pings ``WATCHDOG=1`` while the processor is alive *and getting somewhere*.

    The main thread beats between files and while waiting for pokes, but copying one large
    file can take longer than any sensible ``WatchdogSec=``. So this thread also pings while
    the main thread's own I/O counters move (a per-thread /proc file, so that this thread's
    reads do not count): a hung processor stops both and systemd restarts it, a busy one
    does not get killed mid-copy.
    """

    def __init__(self, notify: Callable[[str], None], usec: int) -> None:
        self._notify = notify
        self.interval = usec / 2e6  # systemd's advice: ping at half the timeout
        self._beat = time.monotonic()
        self._main_tid = threading.get_native_id()
        self._io = _thread_io(self._main_tid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def beat(self) -> None:
        self._beat = time.monotonic()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            io = _thread_io(self._main_tid)
            if time.monotonic() - self._beat < 2 * self.interval or io != self._io:
                self._notify("WATCHDOG=1")
            self._io = io


def _passed_socket() -> socket.socket | None:
    """The listening socket systemd passed (LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    names = [n for n in os.environ.get("LISTEN_FDNAMES", "").split(":") if n]
    # Consumed: a process we might start must not think these fds are meant for it.
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    if count == 0:
        return None
    index = 0
    if names and count > 1:
        if FD_NAME not in names:
            raise ServiceError(
                f"systemd passed {count} sockets named {', '.join(names)} but none named "
                f"{FD_NAME!r}; set FileDescriptorName={FD_NAME} in the socket unit"
            )
        index = names.index(FD_NAME)
    fd = SD_LISTEN_FDS_START + index
    for other in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(other, False)
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise ServiceError(
            "the socket systemd passed is not a unix stream socket; use ListenStream= with a "
            "path in dittohead-processor.socket"
        )
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ServiceError("the socket systemd passed is not listening; set Accept=no")
    return sock


def listening_socket(config: Config) -> socket.socket:
    """The socket systemd passed us, or one bound at the configured path."""
    passed = _passed_socket()
    if passed is not None:
        return passed
    path = config.socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        sock.bind(str(path))
        os.chmod(path, 0o660)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        # Started by hand where tmpfiles made the socket's folder for root (/run/dittohead
        # 0755 root): the socket unit is what listens there, not this process.
        raise ServiceError(
            f"cannot listen on {path} ({describe_os_error(exc)}): let systemd listen for it "
            "(systemctl enable --now dittohead-processor.socket), or run "
            f"'dittohead-processor --once' for a single pass"
        ) from None
    return sock


def drain_pokes(sock: socket.socket) -> int:
    """Accept every waiting connection, read a few bytes of each without waiting, close it.

    Nothing in a poke is acted upon (it is only "something may have arrived"), and nothing
    waits on the poker: a collector who connects and sends nothing cannot stall the loop.
    """
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return count
        count += 1
        with conn:
            try:
                creds = conn.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
                )
                pid, uid, _gid = struct.unpack("3i", creds)
                conn.recv(_POKE_MAX, socket.MSG_DONTWAIT)
                log.debug("poke from uid %d (pid %d)", uid, pid)
            except OSError:
                pass


class _Status:
    """``STATUS=`` lines plus a watchdog beat on each progress report.

    Rate-limited per topic (the text before the first ``:``): each new upload shows at once,
    its "n/N files" counter at most once per `_STATUS_EVERY` seconds.
    """

    def __init__(self, notify: Notifier, watchdog: Watchdog | None) -> None:
        self._notify = notify
        self._watchdog = watchdog
        self._last = 0.0
        self._topic = ""

    def __call__(self, message: str, force: bool = False) -> None:
        if self._watchdog is not None:
            self._watchdog.beat()
        now = time.monotonic()
        topic = message.partition(":")[0]
        if force or topic != self._topic or now - self._last >= _STATUS_EVERY:
            self._last, self._topic = now, topic
            self._notify(f"STATUS={message}")


class _StopSignal:
    """SIGTERM/SIGINT set `event` and wake select() through a socketpair (``wakeup``).

    Without the wake-up fd, PEP 475 would retry the select() after the handler ran and the
    processor would only notice the stop at the end of its idle wait.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.wakeup, self._write = socket.socketpair()
        self.wakeup.setblocking(False)
        self._write.setblocking(False)
        signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self.wakeup.recv(64):
                pass

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self.wakeup.close()
        self._write.close()


def serve(config: Config) -> int:
    notify = Notifier()
    sock = listening_socket(config)
    sock.setblocking(False)
    stop = _StopSignal()
    watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    if os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        watchdog_usec = 0  # meant for another process (sd_watchdog_enabled's rule)
    watchdog = Watchdog(notify, watchdog_usec) if watchdog_usec else None
    status = _Status(notify, watchdog)
    hooks = Hooks(progress=status, stop_requested=stop.event.is_set)
    notify("READY=1")
    if watchdog is not None:
        watchdog.start()
    idle_since = time.monotonic()
    pending = True  # started: something may be waiting (that is why we were started)
    try:
        while not stop.event.is_set():
            if pending:
                status("looking for committed uploads", force=True)
                try:
                    summary = run_once(config, hooks)
                except Stopped:
                    log.info("stopped between two files; the next run finishes the upload")
                    break
                except StudiesFailed as exc:
                    # Each study left has had its line; the service goes on serving the
                    # others (the next poke or the rescan timer tries the left ones again).
                    summary = exc.summary
                status(_summary_line(summary), force=True)
                idle_since = time.monotonic()
                pending = False
            remaining = config.processor.idle_timeout - (time.monotonic() - idle_since)
            if remaining <= 0:
                break
            wait = min(remaining, watchdog.interval) if watchdog else remaining
            ready, _, _ = select.select([sock, stop.wakeup], [], [], wait)
            if watchdog is not None:
                watchdog.beat()
            if stop.wakeup in ready:
                stop.drain()
            if sock in ready and drain_pokes(sock):
                pending = True
    finally:
        notify("STOPPING=1")
        if watchdog is not None:
            watchdog.stop()
        stop.close()
        sock.close()
    return 0


def _summary_line(summary: Summary) -> str:
    return (
        f"idle; last pass finalized {summary.entries} uploads "
        f"({summary.stored} stored, {summary.duplicates} duplicates, "
        f"{summary.quarantined} quarantined)"
    )


def once(config: Config) -> int:
    """``--once`` (the rescan timer's service): one pass; SIGTERM stops it between files."""
    stop = _StopSignal()
    failed: StudiesFailed | None = None
    try:
        summary = run_once(config, Hooks(stop_requested=stop.event.is_set))
    except Stopped:
        log.info("stopped between two files; the next run finishes the upload")
        return 0
    except StudiesFailed as exc:
        summary, failed = exc.summary, exc
    finally:
        stop.close()
    log.info(
        "finalized %d uploads: %d files stored, %d duplicates, %d quarantined",
        summary.entries,
        summary.stored,
        summary.duplicates,
        summary.quarantined,
    )
    if failed is not None:
        raise failed  # the exit status says some studies were left; main prints the line
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_service(
        argv,
        prog="dittohead-processor",
        description="Finalize committed uploads into the study destinations.",
        once_help="finalize what is pending and exit",
        work=_work,
    )


def _work(config: Config, once_only: bool) -> int:
    check_kernel()
    return once(config) if once_only else serve(config)


if __name__ == "__main__":
    sys.exit(main())
