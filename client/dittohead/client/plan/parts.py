"""Parts: the one place that sequences the parts of a send (`batches` cuts them).

Each part is its own upload with its own receipt (`batches`). `Parts` overlaps them: part
n+1's stream starts as soon as part n's stream is complete (its stdin closed), while part n's
receiver commits (``syncfs``, rename, ``syncfs``) and its receipt travels back; waiting for
that cost about 6% of a 20,000-file send (docs/performance.md, "The cost of parts"). Why the
overlap is safe:

* every part is still its own upload: its receipt is checked (`reply.receipt`) and recorded in
  the state by the thread that carried it, as it arrives, and never before it checked out;
* receipts may arrive out of order (part n+1's before part n's): parts carry disjoint files
  (`batches.split` puts every path in exactly one part), so what one part's record says never
  depends on another's (`State` serializes the commits and merges each with the file as it
  is), and on the server the order in which the processor finalizes the two entries (each
  uploader's in commit order) cannot change where any file is stored, since no path is in both;
* it is bounded: one part streams and at most one more waits for its receipt. Part n+2 starts,
  and its ``ssh`` is started ahead of it (`_Ahead`), only once part n has its answer, so a send
  holds at most two connections, and two of the collector's upload slots on the server
  (``limits.max_concurrent_uploads``), as the early start alone did before;
* any failure (a refusal, a receipt that does not check out, a dropped connection, Ctrl-C, the
  window's Cancel) stops the part that is streaming (`_Stop` at its next chunk: its stream ends
  without the manifest, so its receiver stores nothing), lets a part whose stream was complete
  get its answer (recorded if good; after Ctrl-C for at most `STOP_GRACE` seconds), and then
  ends the send with the first failure's one line (`PartlySent` says how much is safe).

Each part runs in a thread of its own through `deliver.run`, exactly as a single upload does;
the thread that called `send_all` only conducts (`Parts.run`): it starts parts, moves the
progress meter on when a part's stream is complete (bytes count when they are streamed; the
last part's confirmation is what makes a send 100%), and asks the collector whatever a part's
login needs to ask (`Parts.routed`), so that a prompt is always asked from the thread that
called, where Ctrl-C reaches it (only the main thread gets SIGINT: `cli._interruptible`).
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ParamSpec, TypeVar, cast

from dittohead.client.plan.job import Job
from dittohead.client.plan.scan import FileItem, Plan
from dittohead.client.progress import Meter, Reading
from dittohead.client.transport import Prompts, SecretPrompt
from dittohead.client.transport.openssh import EarlyStart
from dittohead.core.errors import DittoheadError

if TYPE_CHECKING:
    from dittohead.core.receipt import Receipt

P = ParamSpec("P")
T = TypeVar("T")

#: start the next part's ssh when the current part is expected to end within this many
#: seconds (well below `openssh.EARLY_MAX_AGE`, after which a waiting ssh is replaced)
PRESTART_SECONDS = 3.0
EX_INTERRUPTED = 130
#: after Ctrl-C, seconds a part whose stream was complete may still take to bring its receipt
#: (recorded if good); normally it comes within a few tenths of a second
STOP_GRACE = 2.0
#: how often the conducting thread wakes while it waits (Windows cannot interrupt a wait)
_POLL = 0.5


class PartlySent(DittoheadError):
    """A send stopped after some of its batches were stored and confirmed."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _partly(receipts: Sequence[Receipt], batches: int, what: str, code: int) -> PartlySent:
    files = sum(r.files for r in receipts)
    return PartlySent(
        f"{what}; {len(receipts)} of {batches} parts ({files} files) were stored and "
        "confirmed before that, and are not sent again: run the same send again for the rest",
        code,
    )


class _Stop(DittoheadError):
    """The send is stopping (another part failed, or Ctrl-C): this part's stream ends here,
    without its manifest, so its receiver stores nothing of it."""

    exit_code = EX_INTERRUPTED


class _Remembered:
    """A secret prompt that asks once per send: each later part is given the answer once
    more, and only a part that asks again (the answer was refused) asks the person."""

    def __init__(self, ask: SecretPrompt) -> None:
        self.ask = ask
        self.answers: dict[str, str] = {}

    def for_part(self) -> SecretPrompt:
        given: set[str] = set()  # what this part was given already

        def prompt(text: str) -> str | None:
            if text in self.answers and text not in given:
                given.add(text)
                return self.answers[text]
            answer = self.ask(text)
            if answer is not None:
                self.answers[text] = answer
                given.add(text)
            return answer

        return prompt


class _Ahead:
    """The progress callback of one part (called in its thread after every chunk): stops the
    part when the send is stopping, shows the send's progress, and starts the next part's
    ``ssh`` when this part is about to end and no other part still waits for its receipt."""

    def __init__(self, parts: Parts, part: int, following: EarlyStart | None) -> None:
        self.parts = parts
        self.part = part
        self.following = following

    def __call__(self, done: int, total: int) -> None:
        parts = self.parts
        if parts.stop.is_set():
            raise _Stop()
        if self.part in parts.streamed:
            # Streamed again (`deliver` resends once without compression to a server that
            # predates it): its bytes were counted the first time.
            return
        reading = parts.meter.read(done)
        if parts.show is not None:
            parts.show(reading)
        nxt = self.following
        # At most two connections: the next ssh only once this part is the only one running.
        if nxt is not None and not nxt.tried and len(parts.running) <= 1:
            left = total - done
            if left <= 0 or (reading.rate and left / reading.rate < PRESTART_SECONDS):
                nxt()


@dataclass(frozen=True, slots=True)
class _Streamed:
    """A part's whole stream is in its transport's hands (sent by the part's thread)."""

    part: int


@dataclass(frozen=True, slots=True)
class _Settled:
    """A part ended: its receipt checked out and was recorded, or the error that stopped it."""

    part: int
    receipt: Receipt | None
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class _Ask:
    """A part's login needs the person: the conducting thread asks and puts the answer (or
    what the prompt raised) in `reply`."""

    prompt: Callable[[], object]
    reply: queue.Queue[tuple[object, BaseException | None]]


_Event = _Streamed | _Settled | _Ask


class Parts:
    """The parts of one send, streamed one after the other, each part's receipt awaited while
    the next one streams (see the module's docstring for why that is safe)."""

    def __init__(
        self,
        job: Job,
        batches: list[tuple[FileItem, ...]],
        *,
        prompts: Prompts | None,
        show: Callable[[Reading], None] | None,
        early: EarlyStart | None,
    ) -> None:
        # Imported here, not at the top: `deliver` loads the stream and the receipt (`pack`,
        # tarfile, `reply`), which the CLI imports only once ssh has been started.
        from dittohead.client.deliver import run

        self.deliver = run
        self.job = job
        self.batches = batches
        selected = job.selected
        self.meter = Meter(selected.total_bytes, len(selected.files), len(batches))
        self.show = show
        self.early = early
        self.conductor = threading.current_thread()
        self.events: queue.Queue[_Event] = queue.Queue()
        self.stop = threading.Event()
        self.lock = threading.Lock()  # `closed` and the questions put on `events`
        self.closed = False
        self.started = 0  # parts started so far (they start in order)
        self.running: set[int] = set()  # started, no answer yet
        self.streamed: set[int] = set()  # streams complete
        self.streamed_bytes = 0
        self.receipts: dict[int, Receipt] = {}
        self.failure: BaseException | None = None
        self.ahead: dict[int, EarlyStart] = {}  # a part's ssh, started during the part before
        # The questions a part's login may need, asked by this thread (`routed`); a secret
        # once per send (`_Remembered`).
        self.prompts = prompts
        ask = prompts or Prompts()
        self.trust = None if ask.trust is None else self.routed(ask.trust)
        self.password = None if ask.password is None else _Remembered(self.routed(ask.password))
        self.passphrase = (
            None if ask.passphrase is None else _Remembered(self.routed(ask.passphrase))
        )

    # -- in the conducting thread --------------------------------------------------------------

    def run(self) -> list[Receipt]:
        """The receipts in part order; raises the first failure (see `send_all`)."""
        try:
            self._conduct()
        finally:
            self._close()
        if self.failure is not None:
            raise self._failed(self.failure)
        return [self.receipts[n] for n in sorted(self.receipts)]

    def _conduct(self) -> None:
        try:
            while True:
                if self._due():
                    self._start()
                if not self.running:
                    return
                event = self._next(None)
                if event is not None:
                    self._handle(event)
        except KeyboardInterrupt:
            self._fail(KeyboardInterrupt())
            # Ctrl-C stops at once, but a part whose stream was complete gets a moment to
            # bring its receipt, so that what the server confirmed is remembered.
            deadline = time.monotonic() + STOP_GRACE
            try:
                while self.running and (left := deadline - time.monotonic()) > 0:
                    event = self._next(left)
                    if event is not None:
                        self._handle(event)
            except KeyboardInterrupt:
                pass  # pressed again: stop now

    def _due(self) -> bool:
        """Whether the next part may start: nothing failed, the part before it has streamed
        all of its stream, and every part before that one has its answer."""
        n = self.started
        return (
            n < len(self.batches)
            and self.failure is None
            and (n == 0 or n - 1 in self.streamed)
            and self.running <= {n - 1}
        )

    def _next(self, timeout: float | None) -> _Event | None:
        """The next event; None once `timeout` seconds passed without one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
            if wait <= 0:
                return None
            try:
                return self.events.get(timeout=wait)
            except queue.Empty:
                continue

    def _handle(self, event: _Event) -> None:
        if isinstance(event, _Ask):
            self._answer(event)
        elif isinstance(event, _Streamed):
            self._streamed(event.part)
        else:
            self.running.discard(event.part)
            if event.receipt is not None:
                self._streamed(event.part)  # (it was, before the receipt could come)
                self.receipts[event.part] = event.receipt
            else:
                assert event.error is not None
                self._fail(event.error)

    def _streamed(self, part: int) -> None:
        if part in self.streamed:
            return
        self.streamed.add(part)
        self.streamed_bytes += sum(f.size for f in self.batches[part])
        self.meter.next_batch(self.streamed_bytes)

    def _fail(self, error: BaseException) -> None:
        if self.failure is None:  # the first failure is the one to tell (the rest follow it)
            self.failure = error
        self.stop.set()

    def _answer(self, ask: _Ask) -> None:
        try:
            value = ask.prompt()
        except KeyboardInterrupt:
            ask.reply.put((None, KeyboardInterrupt()))  # the part's login gives up too
            raise
        except BaseException as exc:  # CannotAsk, say: the part's login explains it
            ask.reply.put((None, exc))
        else:
            ask.reply.put((value, None))

    def _start(self) -> None:
        n = self.started
        self.started += 1
        selected = self.job.selected
        # The empty folders travel with the first part; every part brings the folders its
        # own files are in (`pack.members`).
        empty = selected.empty_dirs if n == 0 else ()
        plan = Plan(selected.root, self.batches[n], selected.dirs, empty)
        early = self.early if n == 0 else self.ahead.get(n)
        following = None
        if n + 1 < len(self.batches):
            following = self.ahead[n + 1] = EarlyStart(self.job.server, self.job.request)
        self.running.add(n)
        thread = threading.Thread(
            target=self._part,
            args=(n, replace(self.job, selected=plan), _Ahead(self, n, following), early),
            name=f"dittohead-part-{n + 1}",
            daemon=True,  # one left waiting after Ctrl-C never holds the process
        )
        thread.start()

    def _close(self) -> None:
        """The send is over: no question is asked any more, no ssh started ahead is left."""
        self.stop.set()
        with self.lock:
            self.closed = True
        while True:  # a question put before `closed` was set is answered "stop"
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            if isinstance(event, _Ask):
                event.reply.put((None, _Stop()))
            elif isinstance(event, _Settled) and event.receipt is not None:
                self.receipts[event.part] = event.receipt  # recorded by its thread already
        for pending in self.ahead.values():
            pending.close()

    def _failed(self, failure: BaseException) -> BaseException:
        """What `send_all` raises for `failure`: as it is when no part was confirmed, else a
        `PartlySent` that says how much is safe."""
        receipts = [self.receipts[n] for n in sorted(self.receipts)]
        if not receipts:
            return failure
        if isinstance(failure, KeyboardInterrupt):
            return _partly(receipts, len(self.batches), "interrupted", EX_INTERRUPTED)
        if isinstance(failure, DittoheadError):
            partly = _partly(receipts, len(self.batches), failure.message, failure.exit_code)
            partly.__cause__ = failure
            return partly
        return failure  # a bug: as it is

    # -- in a part's thread ----------------------------------------------------------------------

    def _part(self, n: int, job: Job, progress: _Ahead, early: EarlyStart | None) -> None:
        """Send part `n` (`deliver.run`: stream, receipt, state) and tell the conductor."""
        try:
            receipt = self.deliver(
                job,
                prompts=self._prompts(),
                progress=progress,
                early=early,
                streamed=lambda: self.events.put(_Streamed(n)),
            )
        except BaseException as exc:  # whatever it was, the conductor decides
            self.events.put(_Settled(n, None, exc))
        else:
            self.events.put(_Settled(n, receipt, None))

    def _prompts(self) -> Prompts | None:
        if self.prompts is None:
            return None
        return Prompts(
            trust=self.trust,
            password=None if self.password is None else self.password.for_part(),
            passphrase=None if self.passphrase is None else self.passphrase.for_part(),
        )

    def routed(self, prompt: Callable[P, T]) -> Callable[P, T]:
        """`prompt`, asked by the conducting thread whichever thread calls it."""

        def ask(*args: P.args, **kwargs: P.kwargs) -> T:
            if threading.current_thread() is self.conductor:
                return prompt(*args, **kwargs)
            reply: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(maxsize=1)
            with self.lock:
                # Nobody is asked anything once the send stops (say, Ctrl-C ended an ``ssh``
                # and `deliver` tries the part with asyncssh, which would ask for a password).
                if self.closed or self.stop.is_set():
                    raise _Stop()
                self.events.put(_Ask(functools.partial(prompt, *args, **kwargs), reply))
            value, error = reply.get()
            if error is not None:
                raise error
            return cast(T, value)

        return ask
