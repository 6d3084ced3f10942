"""The window's worker: a send (or a status query) run off the Tk event loop, in a thread.

Tk may only be touched from the thread that runs its loop, and a send of 20 GiB takes an hour:
so the send runs here, in a daemon thread, exactly as ``dittohead send`` runs it in-process
(`settle` was done by the window; `prepare`, then `batches.send_all`), and everything it has to
say travels to the window as events on a `queue.Queue` that the window polls with ``after``.

Questions (trust this server? a password, a passphrase) are asked from inside the send, in this
thread, while the send waits: `Asked` carries a one-slot reply queue, the window answers it from
its own thread after showing the dialog, and this thread blocks on it. That is the simpler of
the two correct designs (the other, ``dittohead send --progress=json`` as a subprocess, would
need its prompts carried over a pipe in a protocol of their own).

Cancel is a `threading.Event` checked on each progress reading, that is after every chunk the
pack has read and handed to the transport: the check raises `Cancelled`, a `DittoheadError`, so
that both transports stop as they do for a local file that changed (``ssh`` is stopped, or the
asyncssh channel closed, without the manifest: the receiver stores nothing of that part), the
state keeps every part whose receipt came (`send_all` says how much in a `PartlySent`), and the
next Send sends only the rest. While connecting or logging in there is no reading: a cancel
then takes effect once the connection is up or has failed (at most `CONNECT_TIMEOUT`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from dittohead.client.plan.layout import landing
from dittohead.client.presets_cmd import Settled
from dittohead.client.progress import Reading
from dittohead.client.transport import Prompts
from dittohead.core.errors import DittoheadError
from dittohead.core.grammar import StatusRequest

if TYPE_CHECKING:
    from dittohead.core.receipt import Receipt

log = logging.getLogger(__name__)

EX_INTERRUPTED = 130

Kind = Literal["trust", "password", "passphrase"]


class Cancelled(DittoheadError):
    """The collector pressed Cancel: the part being sent was not stored."""

    exit_code = EX_INTERRUPTED

    def __init__(self) -> None:
        super().__init__("stopped; nothing of the part being sent was stored")


# -- events, from the worker to the window -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progressed:
    reading: Reading


@dataclass(frozen=True, slots=True)
class Asked:
    """A question the send waits on; the window puts the answer (or None) into `reply`."""

    kind: Kind
    text: str  # the prompt ("Password for alice@host: ") or, for trust, the fingerprint line
    server: str
    reply: queue.Queue[object]


@dataclass(frozen=True, slots=True)
class Noted:
    """A warning the send logged (say, a folder named like another study)."""

    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The send is over: the receipts (none when there was nothing new), and the words."""

    receipts: tuple[Receipt, ...]
    text: str


@dataclass(frozen=True, slots=True)
class Failed:
    error: DittoheadError


@dataclass(frozen=True, slots=True)
class Crashed:
    """Not a `DittoheadError`: a bug; the window says so without a traceback."""

    text: str


@dataclass(frozen=True, slots=True)
class StatusAnswered:
    text: str


Event = Progressed | Asked | Noted | Finished | Failed | Crashed | StatusAnswered


# -- the worker --------------------------------------------------------------------------------


class _Warnings(logging.Handler):
    """The send's warnings go to the window (only the CLI and the window show anything)."""

    def __init__(self, events: queue.Queue[Event]) -> None:
        super().__init__(logging.WARNING)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        self.events.put(Noted(record.getMessage()))


class Worker:
    """One send or status query at a time, in its own thread."""

    def __init__(self, events: queue.Queue[Event]) -> None:
        self.events = events
        self.cancel = threading.Event()
        self.thread: threading.Thread | None = None
        self.pending: queue.Queue[object] | None = None  # the reply a question waits on
        handler = _Warnings(events)
        ours = logging.getLogger("dittohead")
        ours.handlers[:] = [handler]
        ours.setLevel(logging.WARNING)
        ours.propagate = False
        logging.getLogger("asyncssh").setLevel(logging.WARNING)

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start_send(self, settled: Settled, password: str | None, state: str | None) -> None:
        self._start(lambda: self._send(settled, password, state))

    def start_status(self, settled: Settled, password: str | None) -> None:
        self._start(lambda: self._status(settled, password))

    def stop(self) -> None:
        """Cancel: the send stops at its next reading (see the module's docstring)."""
        self.cancel.set()
        pending = self.pending
        if pending is not None:
            pending.put(None)  # a question still open is answered "no"

    def _start(self, body: Callable[[], None]) -> None:
        assert not self.busy
        self.cancel.clear()
        self.thread = threading.Thread(target=self._guarded, args=(body,), daemon=True)
        self.thread.start()

    def _guarded(self, body: Callable[[], None]) -> None:
        try:
            body()
        except DittoheadError as exc:
            self.events.put(Failed(exc))
        except KeyboardInterrupt:
            self.events.put(Failed(Cancelled()))
        except Exception as exc:
            log.debug("internal error", exc_info=True)
            self.events.put(Crashed(f"internal error: {type(exc).__name__}: {exc}"))

    # -- questions -----------------------------------------------------------------------------

    def _ask(self, kind: Kind, text: str, server: str) -> object:
        if self.cancel.is_set():
            return None
        reply: queue.Queue[object] = queue.Queue(maxsize=1)
        self.pending = reply
        try:
            self.events.put(Asked(kind, text, server, reply))
            return reply.get()
        finally:
            self.pending = None

    def prompts(self, settled: Settled, password: str | None) -> Prompts:
        where = f"{settled.server.host}:{settled.server.port}"
        typed = [password] if password else []

        def trust(server: str, fingerprint: str, key_type: str) -> bool:
            return self._ask("trust", f"{fingerprint}  ({key_type})", server) is True

        def secret(kind: Kind) -> Callable[[str], str | None]:
            def ask(prompt: str) -> str | None:
                if kind == "password" and typed and not prompt.startswith("Wrong"):
                    return typed.pop()  # the window's field answers the first question
                answer = self._ask(kind, prompt, where)
                return answer if isinstance(answer, str) else None

            return ask

        return Prompts(trust=trust, password=secret("password"), passphrase=secret("passphrase"))

    # -- the work ------------------------------------------------------------------------------

    def _show(self, reading: Reading) -> None:
        if self.cancel.is_set():
            raise Cancelled()
        self.events.put(Progressed(reading))

    def _send(self, settled: Settled, password: str | None, state: str | None) -> None:
        from dittohead.client.cli import receipts_text
        from dittohead.client.plan.batches import Limits, limits_from_env, send_all

        job = settled.prepare(state=state)
        if not job.selected.files:
            count = len(job.scanned.files)
            text = (
                f"Nothing to send: there are no files in {job.scanned.root}."
                if count == 0
                else f"Nothing new to send: all {count} files were already confirmed by the server."
            )
            self.events.put(Finished((), text))
            return
        if self.cancel.is_set():
            raise Cancelled()
        limits = Limits.from_options(None, None, limits_from_env())
        receipts = send_all(
            job, limits=limits, prompts=self.prompts(settled, password), show=self._show
        )
        stored = landing(f.path for f in job.selected.files)
        later = "See what became of it later with the Status button."
        self.events.put(Finished(tuple(receipts), receipts_text(receipts, stored, later)))

    def _status(self, settled: Settled, password: str | None) -> None:
        from dittohead.client.status_cmd import ask, describe

        doc = ask(settled.server, StatusRequest(settled.study), self.prompts(settled, password))
        self.events.put(StatusAnswered(describe(doc)))
