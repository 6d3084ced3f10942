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

An upload that asks for compression (the `` zstd`` flag, `squeeze.wanted`) and meets a server
from before the flag is refused at once (exit 64, "malformed upload request", before the
receiver read a byte): it is sent again, once, without the flag (`_carry`). That costs one more
connection against such a server; the refusal is the old server's fixed words, so nothing else
is ever retried.

`openssh.EarlyStart` starts ``ssh`` the moment the folder scan meets the first file the server
has not confirmed, so that connecting, logging in and the receiver's start-up overlap with the
rest of the scan; `run` takes that ``ssh`` over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from dittohead.client import reply
from dittohead.client.pack import Pack
from dittohead.client.plan.job import Job
from dittohead.client.plan.state import Staged
from dittohead.client.reply import Sent
from dittohead.client.transport import Progress, Prompts, Transport, Unusable, login_name, openssh
from dittohead.client.transport.openssh import EarlyStart
from dittohead.core.errors import LocalFileError, ProtocolError
from dittohead.core.grammar import UploadRequest
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
    streamed: Callable[[], None] | None = None,
) -> Receipt:
    """Send what `job` selected and, once the receipt checks out, record it in the state.

    `streamed` is called as soon as the whole stream is in the transport's hands, before the
    receipt (`batches` starts the next part's stream then); again if the upload is sent again
    without compression (`_carry`).
    """
    record = _Record(job)

    def complete() -> None:
        if streamed is not None:
            streamed()
        record.stage()

    try:
        receipt = _carry(job, prompts, progress, early, complete)
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
    """The checked receipt; sent again without compression if the server predates it."""
    try:
        return _carry_as(
            job.request, job, prompts=prompts, progress=progress, early=early, streamed=streamed
        )
    except ProtocolError as exc:
        if not (job.request.compress and refuses_compression(exc)):
            raise
    log.info("the server does not know compression; sending again without it")
    plain = replace(job.request, compress=False)
    return _carry_as(plain, job, prompts=prompts, progress=progress, early=None, streamed=streamed)


def refuses_compression(exc: ProtocolError) -> bool:
    """Whether a server refused an upload request with the `` zstd`` flag because it predates
    the flag: it then answers exactly as to any malformed upload request."""
    return exc.exit_code == ProtocolError.exit_code and "malformed upload request" in exc.message


def _carry_as(
    request: UploadRequest,
    job: Job,
    *,
    prompts: Prompts | None,
    progress: Progress | None,
    early: EarlyStart | None,
    streamed: Callable[[], None],
) -> Receipt:
    """The checked receipt for `request`, through OpenSSH when it can, else through asyncssh."""
    session = early.take() if early is not None else openssh.start(job.server, request)
    if session is not None:
        try:
            confirmed = _through(session, job, request, progress, streamed)
        except Unusable as exc:
            log.info("OpenSSH did not send (%s); sending with dittohead's own SSH client", exc)
        else:
            log.info("sent through OpenSSH (%s)", session.program)
            return confirmed
    # Imported only now: asyncssh takes longer to load than the rest of a send's start-up, and
    # OpenSSH carries most uploads.
    from dittohead.client.transport.builtin import AsyncsshTransport

    return _through(
        AsyncsshTransport(job.server, request, prompts), job, request, progress, streamed
    )


def _through(
    transport: Transport,
    job: Job,
    request: UploadRequest,
    progress: Progress | None,
    streamed: Callable[[], None],
) -> Receipt:
    """Stream the job's files through `transport` and check the receipt in its answer."""
    pack = Pack(job.selected, compress=request.compress)
    sent: Sent | None = None

    def complete() -> None:
        # The client's own work before the receipt, done while the receiver checks: what the
        # receipt must confirm (hashing the manifest), then the state file (`_Record.stage`).
        nonlocal sent
        sent = Sent.of(pack)
        streamed()

    answer = transport.carry(pack, progress=progress, streamed=complete)
    user = job.server.user or login_name()
    if pack.saved_bytes:
        log.info("compression saved %d of %d bytes", pack.saved_bytes, pack.total_bytes)
    return reply.receipt(answer, sent, request, job.server.host, user)
