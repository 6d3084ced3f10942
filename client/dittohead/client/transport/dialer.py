"""The dialer: opens the TCP connection that ``ssh`` logs in over, with Nagle's algorithm off.

Why: OpenSSH's ``ssh`` turns Nagle's algorithm off only once its session starts. Before that,
where it sends two short messages in a row (the end of the key exchange, then the request for
the login service), the kernel holds the second until the server has acknowledged the first,
and the server, with nothing to say yet, acknowledges only when its delayed-acknowledgement
timer runs out: ~40 ms of every login, seen in packet captures over loopback (and the same over
any network). ``ssh`` takes a ready connection from a ``ProxyCommand`` when
``ProxyUseFdpass=yes``; this program is that command. It connects (each address of the host in
turn, as ``ssh`` does), with Nagle's algorithm off and TCP keep-alives on (as ``ssh`` has them on
its own connections), passes the socket to ``ssh`` over its standard output, and ends.

`dittohead.client.transport.openssh` runs it as ``python -I -S dialer.py`` (no site packages: a ~6
ms start). Where to connect comes from the environment (`HOST`, `PORT`, `TIMEOUT`), never from a
command line a shell would read. It loads nothing but `_socket` (``socket`` would add enum and
selectors, ``os`` another millisecond). When it cannot connect it says why in one line on standard
error, which ``ssh`` passes on, and exits 1: ``ssh`` then gives up as it would after
its own failed connection, and dittohead's own SSH client takes over.
"""

import _socket
import posix  # what os is built on: with -S, os itself (~1 ms of modules) is never loaded
import sys

#: environment variables that tell the dialer where to connect
HOST = "DITTOHEAD_DIAL_HOST"
PORT = "DITTOHEAD_DIAL_PORT"
#: seconds to wait for each address to answer
TIMEOUT = "DITTOHEAD_DIAL_TIMEOUT"


def dial(host: str, port: int, timeout: float) -> _socket.socket:
    """A TCP connection to `host` `port`, with Nagle's algorithm off and keep-alives on."""
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in _socket.getaddrinfo(
        host, port, _socket.AF_UNSPEC, _socket.SOCK_STREAM
    ):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, 1)
            sock.settimeout(timeout)
            sock.connect(address)
            sock.settimeout(None)  # blocking again: ssh sets the flags it wants itself
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    raise error


def hand_over(sock: _socket.socket, channel_fd: int = 1) -> None:
    """Pass `sock` over the Unix socket `channel_fd` (one byte with the descriptor attached,
    what ``ssh`` waits for)."""
    channel = _socket.socket(fileno=channel_fd)
    try:
        fd = sock.fileno().to_bytes(4, sys.byteorder)  # one C int
        channel.sendmsg([b"\0"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd)])
    finally:
        channel.detach()  # the descriptor stays open; it is ssh's end


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _setting(name: str, default: str = "") -> str:
    return posix.environ.get(name.encode(), default.encode()).decode("utf-8", "replace")


def main() -> int:
    host = _setting(HOST)
    port = _setting(PORT)
    # Not "dittohead: …" below: such a line on ssh's standard error is the receiver's.
    try:
        sock = dial(host, int(port), float(_setting(TIMEOUT, "30")))
    except (OSError, ValueError) as exc:
        print(f"dialer: cannot connect to {host} port {port}: {_reason(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C reaches ssh's whole process group: end as ssh does
        return 130
    try:
        hand_over(sock)
    except OSError as exc:  # ssh is gone (stopped while this connected)
        print(f"dialer: cannot hand the connection to ssh: {_reason(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
