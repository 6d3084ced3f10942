"""The client's programmatic interface: `send_folder`, and what a program needs to call it.

A program (a GUI, a lab's own script) sends a folder as ``dittohead send`` does: `job.prepare`
decides what is new, `deliver.run` carries it (OpenSSH when it can, else asyncssh, which is
loaded only then) and records what the server confirmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dittohead.client.deliver import run
from dittohead.client.plan.job import Job, prepare
from dittohead.client.reply import ServerRefused
from dittohead.client.transport import DEFAULT_PORT, Progress, Prompts, Server
from dittohead.core.receipt import Receipt

__all__ = [
    "Job",
    "Progress",
    "Prompts",
    "Receipt",
    "Server",
    "ServerRefused",
    "prepare",
    "run",
    "send_folder",
]


def send_folder(
    host: str,
    *,
    study: str,
    source: str,
    folder: str | Path,
    things: Sequence[str] = (),
    port: int = DEFAULT_PORT,
    user: str | None = None,
    identity: Path | None = None,
    known_hosts: Path | None = None,
    state: Path | None = None,
    prompts: Prompts | None = None,
    progress: Progress | None = None,
) -> Receipt | None:
    """Send what is new or changed in `folder` (or its `things`); None if nothing was new.

    Without `known_hosts` and without a `prompts.trust`, an unknown server is refused: a
    program calling this cannot ask anyone, so pin the key (or trust it once in a terminal).
    """
    job = prepare(
        Server(host, port, user, identity, known_hosts),
        study=study,
        source=source,
        folder=folder,
        things=things,
        state=state,
    )
    if not job.selected.files:
        return None
    return run(job, prompts=prompts, progress=progress)
