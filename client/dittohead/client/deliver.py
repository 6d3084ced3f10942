"""Deliver: carry a prepared job to the server and record what the server confirmed.

Two SSH clients can carry the upload; the stream, the receipt and the checks are the same:

* OpenSSH's ``ssh`` (`openssh`), when it is installed and can finish without asking anything
  (a host key already trusted, a key that logs in): a quarter of asyncssh's CPU per byte, and
  asyncssh is then never even imported;
* asyncssh (`send`) for everything else, and whenever ``ssh`` gave up before the receiver ran:
  it asks the collector (trust this server? password?), or refuses in dittohead's words.

A refusal by the server itself (``dittohead: …`` and its exit status) is final whichever client
carried it: it is never retried the other way.

`job.EarlyStart` starts ``ssh`` (`start_ssh`) the moment the folder scan meets the first file
the server has not confirmed, so that connecting, logging in and the receiver's start-up
(~0.2 s on a LAN) overlap with the rest of the scan. A send with nothing new still connects to
nothing.
"""

from __future__ import annotations

import asyncio
import logging

from dittohead.client import openssh
from dittohead.client.job import EarlyStart, Job, Prompts, Server
from dittohead.client.pack import Pack
from dittohead.client.reply import Progress
from dittohead.core.errors import LocalFileError
from dittohead.core.grammar import UploadRequest
from dittohead.core.receipt import Receipt

log = logging.getLogger(__name__)


def start_ssh(server: Server, request: UploadRequest) -> openssh.Session | None:
    """OpenSSH's ssh running the upload's exec request, or None when it cannot be used."""
    program = openssh.program()
    if program is None:
        return None
    try:
        return openssh.Session(program, server, request)
    except openssh.Unusable as exc:
        log.info("OpenSSH cannot send (%s); dittohead's own SSH client will", exc)
        return None


def run(
    job: Job,
    *,
    prompts: Prompts | None = None,
    progress: Progress | None = None,
    early: EarlyStart | None = None,
) -> Receipt:
    """Send what `job` selected and, once the receipt checks out, record it in the state."""
    session = early.take() if early is not None else start_ssh(job.server, job.request)
    receipt = None
    if session is not None:
        try:
            receipt = session.upload(Pack(job.selected), progress=progress)
        except openssh.Unusable as exc:
            log.info("OpenSSH did not send (%s); sending with dittohead's own SSH client", exc)
    if receipt is None:
        from dittohead.client.send import upload  # noqa: PLC0415 (asyncssh only when needed)

        pack = Pack(job.selected)
        receipt = asyncio.run(
            upload(job.server, job.request, pack, prompts=prompts, progress=progress)
        )
    try:
        job.state.record(job.selected.files)
    except LocalFileError as exc:
        # The server has the files; failing now would make the collector think otherwise.
        log.warning("%s", exc.message)
    return receipt
