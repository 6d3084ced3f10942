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
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, NoReturn

from dittohead.client import presets_cmd, status_cmd
from dittohead.client.plan.job import Job, upload_request
from dittohead.client.plan.layout import landing
from dittohead.client.presets_cmd import Settled, port_number, remember, settle
from dittohead.client.progress import JsonLines, Reading, TerminalLine, human_bytes
from dittohead.client.transport import CannotAsk, Prompts
from dittohead.client.transport.openssh import EarlyStart
from dittohead.core.errors import DittoheadError, UsageError
from dittohead.core.process import run_and_exit

if TYPE_CHECKING:
    from dittohead.client.plan.batches import Limits
    from dittohead.core.receipt import Receipt

log = logging.getLogger(__name__)

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
        "--preset", metavar="NAME", help="send a preset of client.toml (see 'dittohead presets')"
    )
    presets_cmd.add_config_option(send)
    send.add_argument(
        "--host",
        help="the server, as NAME, NAME:PORT or [IPv6]:PORT (default: client.toml, else "
        "$DITTOHEAD_HOST)",
    )
    send.add_argument("--port", type=port_number, help="SSH port (default: client.toml, else 22)")
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
    send.add_argument("--study", help="the study the data belongs to (default: the preset's)")
    send.add_argument(
        "--source", metavar="ID", help="this station's id (default: station in client.toml)"
    )
    send.add_argument("--json", action="store_true", help="print the result as one JSON object")
    send.add_argument(
        "--dry-run", action="store_true", help="only list what would be sent; connect to nothing"
    )
    send.add_argument(
        "--progress",
        choices=("auto", "json", "none"),
        default="auto",
        help="auto: a progress line on a terminal; json: one JSON object per line on stderr",
    )
    # Batch limits, for tests and tuning (docs/collectors/README.md, "Batches").
    send.add_argument("--batch-files", type=_positive, help=argparse.SUPPRESS)
    send.add_argument("--batch-bytes", type=_positive, help=argparse.SUPPRESS)
    send.add_argument("-v", "--verbose", action="count", default=0, help="say more")
    send.add_argument(
        "folder", metavar="FOLDER", nargs="?", help="the folder to send (default: the preset's)"
    )
    send.add_argument("things", metavar="THING", nargs="*", help="only these subfolders")
    presets_cmd.add_parser(commands)
    status_cmd.add_parser(commands)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _path(text: str) -> str:
    # Windows shells do not expand "~"; presets and help texts often use it.
    return os.path.expanduser(text)


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


# -- the send command -------------------------------------------------------------------------


def run(
    job: Job,
    *,
    limits: Limits,
    prompts: Prompts,
    show: Callable[[Reading], None] | None,
    early: EarlyStart | None = None,
) -> list[Receipt]:
    """Connect and send, batch by batch (`batches.send_all`); the receipts in order."""
    # Imported only now, once ssh has been started (`EarlyStart`): the stream and the receipt
    # (`pack`, tarfile, `reply`) are loaded while ssh connects, not before it starts.
    from dittohead.client.plan.batches import send_all

    return send_all(job, limits=limits, prompts=prompts, show=show, early=early)


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


def receipts_text(
    receipts: Sequence[Receipt],
    stored: str,
    later: str = "See what became of it later with 'dittohead status'.",
) -> str:
    """The receipt as a collector reads it (the window shows the same, with its own `later`)."""
    last = receipts[-1]
    files = sum(r.files for r in receipts)
    size = sum(r.bytes for r in receipts)
    ids = "\n            ".join(r.upload for r in receipts)
    label = "upload:  " if len(receipts) == 1 else "uploads: "
    return (
        f"Sent and confirmed by the server.\n"
        f"  {label} {ids}\n"
        f"  files:    {files} ({human_bytes(size)})\n"
        f"  stored:   {stored}\n"
        f"  study:    {last.study}\n"
        f"  station:  {last.source}\n"
        f"  received: {last.received_at}\n"
        f"{later}"
    )


def result_doc(receipts: Sequence[Receipt]) -> dict[str, object]:
    """``--json``'s object: ``uploads`` (in order), ``files`` and ``bytes`` sent this time,
    ``study``, ``source`` (DESIGN "The collector's side"); also the last receipt's other keys
    (``upload``, ``user``, ``received_at``, ``manifest_sha256``) as before batches, and every
    receipt under ``receipts``."""
    doc: dict[str, object] = json.loads(receipts[-1].to_json())
    doc.update(
        uploads=[r.upload for r in receipts],
        files=sum(r.files for r in receipts),
        bytes=sum(r.bytes for r in receipts),
        receipts=[json.loads(r.to_json()) for r in receipts],
    )
    return doc


def _display(args: argparse.Namespace) -> TerminalLine | JsonLines | None:
    if args.progress == "json":
        return JsonLines(sys.stderr)
    if args.progress == "auto" and sys.stderr.isatty():
        return TerminalLine(sys.stderr)
    return None


def cmd_send(args: argparse.Namespace) -> int:
    # The study and station go on the wire: `settle` checks them before anything else.
    settled = settle(args)
    server = settled.server
    request = upload_request(server, settled.study, settled.source)
    early = None if args.dry_run else EarlyStart(server, request)
    try:
        return _send(args, settled, early)
    finally:
        if early is not None:
            early.close()  # started but not used: the scan failed, say


def _send(args: argparse.Namespace, settled: Settled, early: EarlyStart | None) -> int:
    from dittohead.client.plan.batches import Limits, limits_from_env

    limits = Limits.from_options(args.batch_files, args.batch_bytes, limits_from_env())
    job = settled.prepare(state=args.state, on_new=early)
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
                "uploads": [],
                "files": 0,
                "bytes": 0,
                "study": job.request.study,
                "source": job.request.source,
                "nothing_to_send": True,
            },
            human,
        )
        return 0
    display = _display(args)
    try:
        receipts = run(
            job,
            limits=limits,
            prompts=terminal_prompts(),
            show=None if display is None else display.show,
            early=early,
        )
    except BaseException:
        if display is not None:
            display.clear()  # the refusal gets a line of its own, with no "100%" before it
        raise
    if display is not None:
        display.confirmed()
    remember(settled, args)
    stored = landing(f.path for f in job.selected.files)
    _emit(args, result_doc(receipts), receipts_text(receipts, stored))
    return 0


# -- entry point ------------------------------------------------------------------------------


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"dittohead: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _setup_logging(verbose: int) -> None:
    """Warnings (and with -v everything) as ``dittohead: <level>: <message>`` on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    ours = logging.getLogger("dittohead")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.DEBUG if verbose else logging.WARNING)
    ours.propagate = False
    # asyncssh logs every connection step at INFO; only -vv wants that.
    logging.getLogger("asyncssh").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dittohead``; return the exit status."""
    verbose = 0
    try:
        args = build_parser().parse_args(argv)
        verbose = getattr(args, "verbose", 0)
        _setup_logging(verbose)
        if args.command == "presets":
            return presets_cmd.cmd_presets(args)
        if args.command == "status":
            return status_cmd.cmd_status(args, terminal_prompts())
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
