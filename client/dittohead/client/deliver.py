"""Deliver: carry a prepared job to the server and record what the server confirmed.

The one place that chooses a transport. Two can carry the upload (each a `transport.Transport`;
the stream, the receipt and its checks are the same whichever it was):

* OpenSSH's ``ssh`` (`openssh`), when it is installed and can finish without asking anything
  (a host key already trusted, a key that logs in): a quarter of asyncssh's CPU per byte, and
  asyncssh is then never even imported;
* asyncssh (`builtin`) for everything else, and whenever ``ssh`` gave up before the
  receiver ran (`transport.Unusable`): it asks the collector (trust this server? password?), or
  refuses in dittohead's words.

A refusal by the server itself (``dittohead: …`` and its exit status) is final whichever
transport carried it: it is never retried the other way. Either way the answer is judged once,
by `reply.receipt`.

`openssh.EarlyStart` starts ``ssh`` the moment the folder scan meets the first file the server
has not confirmed, so that connecting, logging in and the receiver's start-up overlap with the
rest of the scan; `run` takes that ``ssh`` over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dittohead.client import reply
from dittohead.client.pack import Pack
from dittohead.client.plan.job import Job
from dittohead.client.plan.state import Staged
from dittohead.client.reply import Sent
from dittohead.client.transport import Progress, Prompts, Transport, Unusable, login_name, openssh
from dittohead.client.transport.openssh import EarlyStart
from dittohead.core.errors import LocalFileError
from dittohead.core.receipt import Receipt

log = logging.getLogger(__name__)


class _Record:
    """The state update for one send, written while the receiver checks the upload.

    Once the stream is complete the client has nothing to do until the receipt arrives, and the
    receiver needs tens of milliseconds (checking, syncing, committing): the new state file is
    built and synced then (`State.stage`), and only the rename waits for a good receipt. Without
    one the temporary file is removed and the previous state stays exactly as it was.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.staged: Staged | None = None
        self.failed: LocalFileError | None = None

    def stage(self) -> None:
        """The transports call this once the whole stream is written (again after a retry)."""
        if self.staged is None and self.failed is None:
            try:
                self.staged = self.job.state.stage(self.job.selected.files)
            except LocalFileError as exc:
                self.failed = exc

    def commit(self) -> None:
        self.stage()
        try:
            if self.failed is not None:
                raise self.failed
            assert self.staged is not None
            staged, self.staged = self.staged, None
            staged.commit()
        except LocalFileError as exc:
            # The server has the files; failing now would make the collector think otherwise.
            log.warning("%s", exc.message)

    def discard(self) -> None:
        if self.staged is not None:
            self.staged.discard()
            self.staged = None


def run(
    job: Job,
    *,
    prompts: Prompts | None = None,
    progress: Progress | None = None,
    early: EarlyStart | None = None,
) -> Receipt:
    """Send what `job` selected and, once the receipt checks out, record it in the state."""
    record = _Record(job)
    try:
        receipt = _carry(job, prompts, progress, early, record.stage)
        record.commit()
    finally:
        record.discard()  # no valid receipt (or an interrupt): the state stays as it was
    return receipt


def _carry(
    job: Job,
    prompts: Prompts | None,
    progress: Progress | None,
    early: EarlyStart | None,
    streamed: Callable[[], None],
) -> Receipt:
    """The checked receipt, through OpenSSH when it can, else through asyncssh."""
    session = early.take() if early is not None else openssh.start(job.server, job.request)
    if session is not None:
        try:
            confirmed = _through(session, job, progress, streamed)
        except Unusable as exc:
            log.info("OpenSSH did not send (%s); sending with dittohead's own SSH client", exc)
        else:
            log.info("sent through OpenSSH (%s)", session.program)
            return confirmed
    # Imported only now: asyncssh takes longer to load than the rest of a send's start-up, and
    # OpenSSH carries most uploads.
    from dittohead.client.transport.builtin import AsyncsshTransport

    return _through(AsyncsshTransport(job.server, job.request, prompts), job, progress, streamed)


def _through(
    transport: Transport, job: Job, progress: Progress | None, streamed: Callable[[], None]
) -> Receipt:
    """Stream the job's files through `transport` and check the receipt in its answer."""
    pack = Pack(job.selected)
    sent: Sent | None = None

    def complete() -> None:
        # The client's own work before the receipt, done while the receiver checks: what the
        # receipt must confirm (hashing the manifest), then the state file (`_Record.stage`).
        nonlocal sent
        sent = Sent.of(pack)
        streamed()

    answer = transport.carry(pack, progress=progress, streamed=complete)
    user = job.server.user or login_name()
    return reply.receipt(answer, sent, job.request, job.server.host, user)
