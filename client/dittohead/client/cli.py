"""The ``dittohead`` command: ``dittohead send …`` for collectors.

This is the only place on the client that prints. Everything it shows goes to stderr except
the result (the file list of ``--dry-run``, the receipt), which goes to stdout; with ``--json``
stdout holds exactly one JSON object. Errors are caught in one place: a `DittoheadError`
prints its one line and exits with its code, anything else is an internal error (exit 70,
traceback only with ``-v``).

This module must load on Windows and must not pull in anything from the server side. The
stream and the receipt (`deliver`, with `pack` and tarfile) are loaded once ``ssh`` has been
started, while it connects, and asyncssh only when OpenSSH's ``ssh`` cannot carry the upload
(see tests/unit/client/test_import_boundary.py).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NoReturn, TextIO

from dittohead.client.job import Job, prepare
from dittohead.client.layout import landing, misnamed_folder
from dittohead.client.openssh import EarlyStart
from dittohead.client.transport import DEFAULT_PORT, CannotAsk, Prompts, Server, login_name
from dittohead.core import logs
from dittohead.core.errors import DittoheadError, UsageError
from dittohead.core.grammar import UploadRequest, check_source, check_study
from dittohead.core.process import run_and_exit

if TYPE_CHECKING:
    from dittohead.core.receipt import Receipt

log = logs.getLogger(__name__)

EX_SOFTWARE = 70
EX_INTERRUPTED = 130


class _ArgumentParser(argparse.ArgumentParser):
    # argparse prints and exits by itself; route its complaints through the one catch site.
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see 'dittohead send --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="dittohead",
        description="Send study data to the lab's dittohead server.",
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_ArgumentParser
    )
    send = commands.add_parser(
        "send",
        help="send what is new or changed in a folder",
        description=(
            "Send what is new or changed in FOLDER (or only in its THING subfolders). "
            "Files the server has already confirmed are not sent again."
        ),
    )
    send.add_argument(
        "--host",
        help="the server, as NAME, NAME:PORT or [IPv6]:PORT (default: $DITTOHEAD_HOST)",
    )
    send.add_argument("--port", type=_port, help="the server's SSH port (default 22)")
    send.add_argument("--user", help="your user name on the server (default: your login name)")
    send.add_argument("--identity", type=_path, metavar="KEY", help="SSH private key to log in")
    send.add_argument(
        "--known-hosts",
        type=_path,
        metavar="FILE",
        help="accept only the server keys in this OpenSSH known_hosts file",
    )
    send.add_argument(
        "--state",
        type=_path,
        metavar="FILE",
        help="where to remember what the server confirmed (default: a per-user file)",
    )
    send.add_argument("--study", required=True, help="the study the data belongs to")
    send.add_argument("--source", required=True, metavar="ID", help="this station's id")
    send.add_argument("--json", action="store_true", help="print the result as one JSON object")
    send.add_argument(
        "--dry-run", action="store_true", help="only list what would be sent; connect to nothing"
    )
    send.add_argument("-v", "--verbose", action="count", default=0, help="say more")
    send.add_argument("folder", metavar="FOLDER", help="the folder to send")
    send.add_argument("things", metavar="THING", nargs="*", help="only these subfolders")
    return parser


def _path(text: str) -> str:
    # Windows shells do not expand "~"; presets and help texts often use it.
    return os.path.expanduser(text)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return port


def split_host(text: str) -> tuple[str, int | None]:
    """``name``, ``name:port``, ``[v6 address]:port`` or a bare IPv6 address → (host, port).

    Collectors copy servers as they see them written (``drop.example.org:2222``, as in a
    browser or a known_hosts file); a bare IPv6 address has several colons and no port.
    """
    host, port = text.strip(), None
    if host.startswith("["):
        inside, bracket, rest = host[1:].partition("]")
        if not bracket or not inside or (rest and not rest.startswith(":")):
            raise UsageError(f"--host {text!r} is not a server: write [ADDRESS] or [ADDRESS]:PORT")
        host, port_text = inside, rest[1:] if rest else None
    elif host.count(":") == 1:
        host, port_text = host.split(":")
    else:
        port_text = None
    if port_text is not None:
        try:
            port = _port(port_text)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"--host {text!r}: {exc}") from None
    if not host:
        raise UsageError(f"--host {text!r} names no server")
    return host, port


def human_bytes(n: int) -> str:
    """``1536`` → ``1.5 KiB``."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# -- talking to the person -------------------------------------------------------------------


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt at once while a prompt waits for the collector.

    The prompts are asked from asyncssh's callbacks, while `asyncio.run` is running, and its
    SIGINT handler only cancels the main task, which cannot happen while a blocking read holds
    the loop: Ctrl-C did nothing until Enter. The default handler raises in the read itself
    (the trust prompt's readline; getpass restores the echo on its way out).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers (and only it gets SIGINT)
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _ask_trust(server: str, fingerprint: str, key_type: str) -> bool:
    print(
        f"\nThe server {server} is not known to dittohead on this computer yet.\n"
        f"Its identity (fingerprint) is:\n\n    {fingerprint}  ({key_type})\n\n"
        "Check it with your admin before you trust it: if it does not match, someone may be\n"
        "pretending to be the server.",
        file=sys.stderr,
    )
    print("Trust this server and continue? [yes/no] ", end="", file=sys.stderr, flush=True)
    with _interruptible():
        answer = sys.stdin.readline()  # "" at end of input: no answer means no
    return answer.strip().lower() in ("yes", "y")


def have_terminal() -> bool:
    """Whether getpass can ask on a terminal. Without one it would read the secret from
    stdin, visibly, after a GetPassWarning on stderr: dittohead says what it needed instead."""
    if os.name == "nt":
        return sys.stdin is not None and sys.stdin.isatty()  # getpass reads the console
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)  # where getpass asks
    except OSError:
        return False
    os.close(fd)
    return True


def _ask_secret(prompt: str) -> str | None:
    if not have_terminal():
        raise CannotAsk(prompt)
    try:
        with _interruptible():
            return getpass.getpass(prompt, stream=sys.stderr)
    except EOFError:
        print(file=sys.stderr)
        return None


def terminal_prompts() -> Prompts:
    return Prompts(trust=_ask_trust, password=_ask_secret, passphrase=_ask_secret)


class _ProgressLine:
    """A self-overwriting progress line on a terminal, at most a few updates a second.

    It never says 100% before the server has confirmed: once the last byte is out it says
    the server is checking; `confirmed` then shows 100% and ends the line, `clear` erases it so
    that a refusal (or any error) is printed on a line of its own.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last = 0.0
        self.width = 0  # of the text on the line now (0: nothing shown)
        self.total = 0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.2 and done < total:
            return
        self.last, self.total = now, total
        if done >= total:
            self._show(f"sent {human_bytes(total)}; waiting for the server to confirm")
        else:
            self._show(f"sending: {100 * done // total:3d}%  {human_bytes(done)} of "
                       f"{human_bytes(total)}")  # fmt: skip

    def _show(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = len(text)

    def confirmed(self) -> None:
        if self.width:
            total = human_bytes(self.total)
            self._show(f"sending: 100%  {total} of {total}, confirmed")
            self.stream.write("\n")
            self.stream.flush()

    def clear(self) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


# -- the send command -------------------------------------------------------------------------


def run(
    job: Job, *, prompts: Prompts, progress: _ProgressLine | None, early: EarlyStart | None = None
) -> Receipt:
    """Connect and send (`deliver.run`)."""
    # Imported only now, once ssh has been started (`EarlyStart`): the stream and the receipt
    # (`pack`, tarfile, `reply`) are loaded while ssh connects, not before it starts.
    from dittohead.client.deliver import run as deliver

    return deliver(job, prompts=prompts, progress=progress, early=early)


def _server(args: argparse.Namespace) -> Server:
    given = args.host or os.environ.get("DITTOHEAD_HOST")
    if not given:
        raise UsageError("no server given: use --host (or set DITTOHEAD_HOST)")
    host, port = split_host(given)
    if port is not None and args.port is not None and port != args.port:
        raise UsageError(
            f"the server {given!r} says port {port} but --port says {args.port}: give the port once"
        )
    return Server(
        host=host,
        port=port or args.port or DEFAULT_PORT,
        user=args.user or login_name(),
        identity=args.identity,
        known_hosts=args.known_hosts,
    )


def _emit(args: argparse.Namespace, doc: dict[str, object], human: str) -> None:
    if args.json:
        print(json.dumps(doc, ensure_ascii=False))
    else:
        print(human)


def _dry_run(args: argparse.Namespace, job: Job) -> int:
    files = job.selected.files
    if args.json:
        doc = {"dry_run": True, "files": [f.path for f in files], "bytes": job.selected.total_bytes}
        print(json.dumps(doc, ensure_ascii=False))
        return 0
    for f in files:
        print(f.path)  # as it will be stored, relative to the study's folder
    print(
        f"dry run: {_plural(len(files), 'file')} ({human_bytes(job.selected.total_bytes)}) "
        f"would be sent, stored in the study's folder as {landing(f.path for f in files)}; "
        "nothing was sent",
        file=sys.stderr,
    )
    return 0


def _receipt_text(receipt: Receipt, stored: str) -> str:
    return (
        f"Sent and confirmed by the server.\n"
        f"  upload:   {receipt.upload}\n"
        f"  files:    {receipt.files} ({human_bytes(receipt.bytes)})\n"
        f"  stored:   {stored}\n"
        f"  study:    {receipt.study}\n"
        f"  station:  {receipt.source}\n"
        f"  received: {receipt.received_at}"
    )


def cmd_send(args: argparse.Namespace) -> int:
    # The study and station go on the wire: check them before anything else is looked at.
    check_study(args.study)
    check_source(args.source)
    server = _server(args)
    request = UploadRequest(args.study, args.source)
    early = None if args.dry_run else EarlyStart(server, request)
    try:
        return _send(args, server, early)
    finally:
        if early is not None:
            early.close()  # started but not used: the scan failed, say


def _send(args: argparse.Namespace, server: Server, early: EarlyStart | None) -> int:
    job = prepare(
        server,
        study=args.study,
        source=args.source,
        folder=args.folder,
        things=args.things,
        state=args.state,
        on_new=early,
    )
    misnamed = misnamed_folder(job.scanned.root, job.request.study, job.state.files)
    if misnamed is not None:
        log.warning("%s", misnamed)
    if args.dry_run:
        return _dry_run(args, job)
    if not job.selected.files:
        count = len(job.scanned.files)
        if count == 0:
            human = f"nothing to send: there are no files in {job.scanned.root}"
        elif count == 1:
            human = "nothing new to send: the one file was already confirmed by the server"
        else:
            human = f"nothing new to send: all {count} files were already confirmed by the server"
        _emit(
            args,
            {
                "upload": None,
                "files": 0,
                "bytes": 0,
                "study": job.request.study,
                "source": job.request.source,
                "nothing_to_send": True,
            },
            human,
        )
        return 0
    progress = _ProgressLine(sys.stderr) if sys.stderr.isatty() else None
    try:
        receipt = run(job, prompts=terminal_prompts(), progress=progress, early=early)
    except BaseException:
        if progress is not None:
            progress.clear()  # the refusal gets a line of its own, with no "100%" before it
        raise
    if progress is not None:
        progress.confirmed()
    doc: dict[str, object] = json.loads(receipt.to_json())
    _emit(args, doc, _receipt_text(receipt, landing(f.path for f in job.selected.files)))
    return 0


# -- entry point ------------------------------------------------------------------------------


def _setup_logging(verbose: int) -> None:
    """Warnings (and with -v everything) as ``dittohead: <level>: <message>`` on stderr.
    `logging` itself is loaded only for the first record (see `dittohead.core.logs`), or now
    with -v."""

    def setup() -> None:
        import logging

        class Formatter(logging.Formatter):
            def format(self, record: logging.LogRecord) -> str:
                text = f"dittohead: {record.levelname.lower()}: {record.getMessage()}"
                if record.exc_info:
                    text += "\n" + self.formatException(record.exc_info)
                return text

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(Formatter())
        ours = logging.getLogger("dittohead")
        ours.handlers[:] = [handler]
        ours.setLevel(logging.DEBUG if verbose else logging.WARNING)
        ours.propagate = False
        # asyncssh logs every connection step at INFO; only -vv wants that.
        logging.getLogger("asyncssh").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)

    logs.configure(setup, now=verbose > 0)  # -v: debug records go out from the start


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dittohead``; return the exit status."""
    verbose = 0
    try:
        args = build_parser().parse_args(argv)
        verbose = getattr(args, "verbose", 0)
        _setup_logging(verbose)
        if args.command != "send":
            raise UsageError("say what to do: dittohead send … (see 'dittohead --help')")
        return cmd_send(args)
    except DittoheadError as err:
        print(err.line(), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("\ndittohead: interrupted; nothing was stored", file=sys.stderr)
        return EX_INTERRUPTED
    except SystemExit as exc:  # argparse's --help
        return exc.code if isinstance(exc.code, int) else 0
    except Exception as exc:
        if verbose:
            log.exception("internal error")
        print(f"dittohead: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EX_SOFTWARE


def entry() -> NoReturn:
    """The ``dittohead`` command: `main`, then the process ends at once (see
    `dittohead.core.process`: by then the result is printed and the state file synced)."""
    run_and_exit(main)


if __name__ == "__main__":
    entry()
