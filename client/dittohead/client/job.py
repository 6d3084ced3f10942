"""Job: one send decided on the collector's PC, before (and often instead of) any connection.

`prepare` checks the request, scans the folder and loads the state; the `Job` it returns says
what the server has not confirmed yet. When that is nothing, ``dittohead send`` ends without
connecting, so this module and everything it imports stay free of asyncssh (~0.1 s to import
on a lab PC, more than the rest of a no-change run) and of the modules that need it
(`hostkeys`, `login`, `send`): those are loaded only once there is something to send
(tests/unit/client/test_import_boundary.py checks this).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dittohead.client.scan import Plan, Watch, scan
from dittohead.client.state import State, load_state
from dittohead.core.errors import UsageError
from dittohead.core.grammar import UploadRequest, check_source, check_study
from dittohead.core.values import Value

TYPE_CHECKING = False  # as typing's (mypy reads it so), without importing typing: ~2 ms
if TYPE_CHECKING:
    from typing import Final

    from dittohead.client.openssh import Session
    from dittohead.client.state import StrPath

DEFAULT_PORT = 22
#: for both SSH clients (`send`'s asyncssh, `openssh`'s ssh): seconds until an unreachable
#: server is reported, and between keepalives (a silently dead connection is noticed after ~3)
CONNECT_TIMEOUT = 30
KEEPALIVE_INTERVAL = 30

#: Asked when a server is not known yet: (server "host:port", "SHA256:…", key type) → trust?
TrustPrompt = Callable[[str, str, str], bool]

#: Asks for a secret: prompt text → the answer, or None to give up.
SecretPrompt = Callable[[str], "str | None"]


def login_name() -> str:
    import getpass  # noqa: PLC0415 (start-up time; not needed with --user)

    try:
        return getpass.getuser()
    except Exception as exc:  # getpass raises OSError or KeyError depending on the platform
        raise UsageError("cannot tell your user name; give it with --user") from exc


# No dataclasses before ssh starts (see dittohead.core.values; checked by
# tests/unit/client/test_import_boundary.py): Prompts and Job (and state.State) are plain
# classes.
class Server(Value):
    """Where to send, and how to prove who we are and who the server is (a `Value`)."""

    __slots__ = ("host", "identity", "known_hosts", "port", "user")
    _FIELDS = ("host", "port", "user", "identity", "known_hosts")

    host: Final[str]
    port: Final[int]
    user: Final[str | None]  # None: the local login name
    identity: Final[StrPath | None]  # None: the SSH agent and ~/.ssh/id_* keys
    known_hosts: Final[StrPath | None]  # None: trust on first use (see hostkeys)

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        user: str | None = None,
        identity: StrPath | None = None,
        known_hosts: StrPath | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.identity = identity
        self.known_hosts = known_hosts


class Prompts:
    """How to ask the person in front of the screen. None means "cannot ask": refuse."""

    __slots__ = ("passphrase", "password", "trust")

    def __init__(
        self,
        trust: TrustPrompt | None = None,
        password: SecretPrompt | None = None,
        passphrase: SecretPrompt | None = None,
    ) -> None:
        self.trust = trust
        self.password = password
        self.passphrase = passphrase


class Job:
    """One send, prepared: what the folder holds and what the server has not confirmed."""

    def __init__(
        self,
        server: Server,
        request: UploadRequest,
        scanned: Plan,
        state: State,
        all_confirmed: bool = False,
    ) -> None:
        self.server = server
        self.request = request
        self.scanned = scanned
        self.state = state
        # all_confirmed: known already (the scan's `Watch` never fired)
        self.selected = scanned.with_files(()) if all_confirmed else state.select(scanned)


#: An ssh started early is used only if the stream begins within this many seconds; after a
#: long scan it is replaced by a fresh one, far from the receiver's stall_timeout.
EARLY_MAX_AGE = 10.0


class EarlyStart:
    """Starts ``ssh`` for one upload when called (`prepare`'s `on_new`, at the scan's first new
    file), so that connecting, logging in and the receiver's start-up overlap with the rest of
    the scan; `deliver.run` takes it over. The sending modules are loaded only when it is
    called: a send with nothing new never imports them."""

    def __init__(self, server: Server, request: UploadRequest) -> None:
        self.server = server
        self.request = request
        self.session: Session | None = None
        self.tried = False

    def __call__(self) -> None:
        from dittohead.client.openssh import start  # noqa: PLC0415 (deliberately lazy)

        self.tried = True
        self.session = start(self.server, self.request)

    def take(self) -> Session | None:
        """The ssh for the upload: the one started early, or a new one when none was tried
        yet or it waited too long (then it is stopped); None when OpenSSH cannot be used."""
        session: Session | None
        session, self.session = self.session, None
        if session is not None and session.age() > EARLY_MAX_AGE:
            session.abandon()
            session, self.tried = None, False
        if session is None and not self.tried:
            self()
            session, self.session = self.session, None
        return session

    def close(self) -> None:
        """Stop an ssh that was started but not used (the scan failed, say)."""
        if self.session is not None:
            self.session.abandon()
            self.session = None


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
    while the scan goes on: the send can start connecting then (`EarlyStart`). It is
    never called when there is nothing to send.
    """
    request = UploadRequest(check_study(study), check_source(source))
    loaded = load_state(state, host=server.host, port=server.port, study=study, source=source)
    watch = Watch(loaded.files, on_new) if on_new is not None else None
    plan = scan(folder, things, watch=watch)
    return Job(server, request, plan, loaded, watch is not None and not watch.fired)
