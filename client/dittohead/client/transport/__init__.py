"""Transport: the one small interface an upload's stream travels through, and what it needs.

Two SSH clients can carry an upload (`openssh`, the system's ``ssh``; `builtin`,
dittohead's own). Each is a `Transport`: its one method writes the pack's stream into the
upload's exec request and returns the server's raw `Answer` (stdout, stderr, exit status). What
the answer means (a checked receipt, or the server's refusal in its words) is decided once, in
`reply`, and which transport is tried when is decided once, in `deliver`: the rest of the client
never knows which one carried the stream.

Also here: where to send (`Server`) and how to ask the person (`Prompts`), which both
transports and the CLI share, and the receiver's ``dittohead: …`` lines (`server_words`), by
which a transport tells the receiver's refusal from its own failure.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

from dittohead.core.errors import UsageError

if TYPE_CHECKING:
    from dittohead.client.pack import Pack
    from dittohead.client.plan.state import StrPath

DEFAULT_PORT = 22
#: for both transports: seconds until an unreachable server is reported, and between
#: keepalives (a silently dead connection is noticed after ~3)
CONNECT_TIMEOUT = 30
KEEPALIVE_INTERVAL = 30

#: Told about progress: (file bytes read so far, total file bytes).
Progress = Callable[[int, int], None]

#: Asked when a server is not known yet: (server "host:port", "SHA256:…", key type) → trust?
TrustPrompt = Callable[[str, str, str], bool]

#: Asks for a secret: prompt text → the answer, or None to give up; raises `CannotAsk` when
#: there is nobody to ask (no terminal), KeyboardInterrupt on Ctrl-C.
SecretPrompt = Callable[[str], "str | None"]


class CannotAsk(Exception):
    """A prompt has nobody to ask (say, no terminal to type a password on): whoever needed the
    answer says what was needed and how to do without it."""


def login_name() -> str:
    try:
        return getpass.getuser()
    except Exception as exc:  # getpass raises OSError or KeyError depending on the platform
        raise UsageError("cannot tell your user name; give it with --user") from exc


@dataclass(frozen=True, slots=True)
class Server:
    """Where to send, and how to prove who we are and who the server is."""

    host: str
    port: int = DEFAULT_PORT
    user: str | None = None  # None: the local login name
    identity: StrPath | None = None  # None: the SSH agent and ~/.ssh/id_* keys
    known_hosts: StrPath | None = None  # None: trust on first use (see hostkeys)


@dataclass(frozen=True, slots=True)
class Prompts:
    """How to ask the person in front of the screen. None means "cannot ask": refuse."""

    trust: TrustPrompt | None = None
    password: SecretPrompt | None = None
    passphrase: SecretPrompt | None = None


class Answer(NamedTuple):
    """What the server said to an upload, as it came: `reply.receipt` judges it."""

    stdout: bytes
    stderr: bytes
    #: the receiver's exit status; None when none arrived (the channel closed first), and
    #: 0 or less (a signal) counts the same
    status: int | None


class Unusable(Exception):
    """This transport could not reach the receiver (nothing ran on the server): another may
    carry the upload (the reason is for the log)."""


class Transport(Protocol):
    """Carries one upload's stream to the receiver (the request was given when it was made)."""

    def carry(
        self, pack: Pack, *, progress: Progress | None, streamed: Callable[[], None]
    ) -> Answer:
        """Write the whole of `pack` into the upload and return the server's answer.

        `streamed` is called once the whole stream is in the transport's hands, while the
        receiver checks it (the client's own work that may come before the receipt: see
        `deliver`; and the next part of a send starts to stream then: `plan.parts`); when the
        server stops reading first it is never called. Raises `Unusable`
        when this transport could not reach the receiver, a `DittoheadError` for a failure it
        can explain itself (connecting, logging in, a local file that changed: the receiver
        then sees a stream without its manifest and stores nothing).
        """
        ...


def server_words(stderr: bytes) -> list[str]:
    """The receiver's ``dittohead: …`` lines in `stderr`, without the prefix.

    The receiver promises one line; a login script's noise may come before it.
    """
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    return [line.removeprefix("dittohead: ") for line in lines if line.startswith("dittohead: ")]
