"""``dittohead-processor``: the command line and the socket-activated service loop.

With ``--once`` it finalizes what is pending and exits. Without, it serves the processor socket
(handed over by systemd through ``LISTEN_FDS``, or bound from the config when started by hand):
it finalizes what is pending, then waits for a poke; each poke is only a hint to rescan (the
message is read with a small bounded buffer and never acted upon); after ``idle_timeout``
seconds without one it exits, and systemd starts it again on the next poke.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import stat
import struct
import sys
import time
from types import FrameType

from dittohead.core.errors import DittoheadError
from dittohead.receiver.config import DEFAULT_CONFIG, Config, load_config
from dittohead.receiver.processor import Summary, check_kernel, run_once

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
_POKE_MAX = 64


class _Stop(Exception):
    pass


class Notifier:
    """sd_notify through sdnotify when systemd is watching (NOTIFY_SOCKET set)."""

    def __init__(self) -> None:
        self._notifier = None
        if os.environ.get("NOTIFY_SOCKET"):
            try:
                # Imported here: only the service needs it, and --once runs without it.
                import sdnotify  # noqa: PLC0415

                self._notifier = sdnotify.SystemdNotifier()
            except ImportError:  # pragma: no cover - the receiver extra installs it
                log.warning("NOTIFY_SOCKET is set but sdnotify is not installed")

    def __call__(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)


def listening_socket(config: Config) -> socket.socket:
    """The socket systemd passed us, or one bound at the configured path."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and int(os.environ.get("LISTEN_FDS", "0")):
        return socket.socket(fileno=SD_LISTEN_FDS_START)
    path = config.socket
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o660)
    sock.listen(64)
    return sock


def _drain_poke(conn: socket.socket) -> None:
    """Read (at most a few bytes of) one poke; log who sent it; act on nothing in it."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        conn.settimeout(1.0)
        conn.recv(_POKE_MAX)
        log.debug("poke from uid %d (pid %d)", uid, pid)
    except OSError:
        pass
    finally:
        conn.close()


def serve(config: Config) -> int:
    notify = Notifier()
    sock = listening_socket(config)
    stopping = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    notify("READY=1")
    watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    tick = min(config.processor.idle_timeout, watchdog_usec / 2e6) if watchdog_usec else None
    idle_since = time.monotonic()
    pending = True
    try:
        while not stopping:
            if pending:
                notify("STATUS=finalizing")
                summary = run_once(config)
                _report(summary, notify)
                idle_since = time.monotonic()
                pending = False
            remaining = config.processor.idle_timeout - (time.monotonic() - idle_since)
            if remaining <= 0:
                break
            wait = min(remaining, tick) if tick else remaining
            try:
                ready, _, _ = select.select([sock], [], [], wait)
            except InterruptedError:
                continue
            if watchdog_usec:
                notify("WATCHDOG=1")
            if ready:
                conn, _ = sock.accept()
                _drain_poke(conn)
                pending = True
    finally:
        notify("STOPPING=1")
        sock.close()
    return 0


def _report(summary: Summary, notify: Notifier) -> None:
    notify(
        f"STATUS=idle; last pass finalized {summary.entries} uploads "
        f"({summary.stored} stored, {summary.duplicates} duplicates, "
        f"{summary.quarantined} quarantined)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dittohead-processor",
        description="Finalize committed uploads into the study destinations.",
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="the YAML configuration")
    parser.add_argument("--once", action="store_true", help="finalize what is pending and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(args.config)
        check_kernel()
        if args.once:
            summary = run_once(config)
            log.info(
                "finalized %d uploads: %d files stored, %d duplicates, %d quarantined",
                summary.entries,
                summary.stored,
                summary.duplicates,
                summary.quarantined,
            )
            return 0
        return serve(config)
    except DittoheadError as exc:
        print(exc.line(), file=sys.stderr)
        log.debug("details", exc_info=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
