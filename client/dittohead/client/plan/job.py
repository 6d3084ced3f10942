"""Job: one send decided on the collector's PC, before (and often instead of) any connection.

`prepare` checks the request, scans the folder and loads the state; the `Job` it returns says
what the server has not confirmed yet. When that is nothing, ``dittohead send`` ends without
connecting, so this module and everything it imports stay free of asyncssh and of the modules
that need it (`hostkeys`, `login`, `builtin`): those are loaded only when OpenSSH
cannot carry the upload (tests/unit/client/test_import_boundary.py checks this).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dittohead.client import squeeze
from dittohead.client.plan.scan import Plan, Watch, scan
from dittohead.client.plan.state import State, StrPath, load_state
from dittohead.client.transport import Server
from dittohead.core.grammar import UploadRequest, check_source, check_study


@dataclass(frozen=True, slots=True)
class Job:
    """One send, prepared: what the folder holds and what the server has not confirmed."""

    server: Server
    request: UploadRequest
    scanned: Plan
    state: State
    selected: Plan  # the part of `scanned` the server has not confirmed


def upload_request(server: Server, study: str, source: str) -> UploadRequest:
    """The request for an upload to `server`, checked; compression is asked for unless the
    server is this machine (`squeeze.wanted`)."""
    return UploadRequest(
        check_study(study), check_source(source), compress=squeeze.wanted(server.host)
    )


def prepare(
    server: Server,
    *,
    study: str,
    source: str,
    folder: StrPath,
    things: Sequence[str] = (),
    state: StrPath | None = None,
    on_new: Callable[[], None] | None = None,
) -> Job:
    """Check the request, load the state and scan the folder; nothing touches the network.

    `on_new` is called (once) as soon as the scan finds a file the server has not confirmed,
    while the scan goes on: the send can start connecting then (`openssh.EarlyStart`). It is
    never called when there is nothing to send.
    """
    request = upload_request(server, study, source)
    loaded = load_state(state, host=server.host, port=server.port, study=study, source=source)
    watch = Watch(loaded.files, on_new) if on_new is not None else None
    plan = scan(folder, things, watch=watch)
    # Nothing new is known already when the quick pass confirmed every file (see `scan.Watch`).
    everything_confirmed = watch is not None and not watch.fired
    selected = plan.with_files(()) if everything_confirmed else loaded.select(plan)
    return Job(server, request, plan, loaded, selected)
