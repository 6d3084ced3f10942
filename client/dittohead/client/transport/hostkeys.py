"""Host keys: make sure the server we reached is the one we mean to send study data to.

The decision is made while the SSH key exchange runs (asyncssh calls
`HostKeyPolicy.check` from `SSHClient.validate_host_public_key`), so a server that cannot prove
its identity never gets to ask for a password and never receives a byte of data.

Two modes:

* **Pinned** (``--known-hosts FILE``): only the keys an admin put in that OpenSSH known_hosts
  file are accepted; hashed host names and ``[host]:port`` entries work as in OpenSSH, and
  ``@revoked`` lines are honoured. Nobody is ever asked anything.
* **Trust on first use** (the default): dittohead keeps its own known_hosts file in the
  per-user state folder. A known server with the same key goes on silently; a known server with
  a *different* key is refused, loudly, every time (that is what an interception looks like);
  an unknown server's SHA256 fingerprint is shown and the collector is asked whether to trust it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import asyncssh
from asyncssh.public_key import get_default_public_key_algs

from dittohead.client.plan.state import server_id, user_known_hosts
from dittohead.client.transport import DEFAULT_PORT, TrustPrompt
from dittohead.core.errors import HostKeyError, UsageError, describe_os_error

log = logging.getLogger(__name__)

_INTERCEPT = (
    "someone may be intercepting the connection, or the server was reinstalled: "
    "ask your admin; nothing was sent"
)


def fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")


def host_pattern(host: str, port: int) -> str:
    """How OpenSSH writes a host in known_hosts: ``host``, or ``[host]:port`` off port 22."""
    return host if port == DEFAULT_PORT else f"[{host}]:{port}"


def _fingerprints(keys: Sequence[asyncssh.SSHKey]) -> str:
    return ", ".join(sorted({fingerprint(k) for k in keys}))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


class HostKeyPolicy:
    """Decides whether one server's host key is trusted, for one connection."""

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        pinned: Path | None = None,
        user_file: Path | None = None,
        ask: TrustPrompt | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.pinned = pinned
        self.user_file = user_file if user_file is not None else user_known_hosts()
        self.ask = ask
        self._accepted: set[asyncssh.SSHKey] = set()
        self._known = self._load()

    @property
    def server(self) -> str:
        return server_id(self.host, self.port)

    def _load(self) -> asyncssh.SSHKnownHosts:
        if self.pinned is not None:
            try:
                text = self.pinned.read_text(encoding="utf-8")
            except OSError as exc:
                raise UsageError(
                    f"cannot read the known-hosts file {describe_os_error(exc)}; nothing was sent"
                ) from exc
            source = str(self.pinned)
        else:
            try:
                text = _read_text(self.user_file) or ""
            except OSError as exc:
                raise HostKeyError(
                    f"cannot read dittohead's list of known servers "
                    f"{describe_os_error(exc)}; nothing was sent"
                ) from exc
            source = str(self.user_file)
            if self.port != DEFAULT_PORT:
                # asyncssh falls back to port-22 entries when none names this port; in our own
                # file that would make another server on the same host look like a changed key.
                text = "\n".join(
                    line for line in text.splitlines() if line.lstrip().startswith(("[", "#"))
                )
        try:
            return asyncssh.import_known_hosts(text)
        except ValueError as exc:
            raise UsageError(
                f"the known-hosts file {source} is not in OpenSSH format ({exc}); nothing was sent"
            ) from exc

    def _match(self, addr: str) -> tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey]]:
        port = None if self.port == DEFAULT_PORT else self.port
        result = self._known.match(self.host, addr, port)
        return list(result[0]), list(result[2])  # trusted host keys, revoked keys

    def host_key_algs(self) -> list[str]:
        """Host key algorithms to offer: those of known keys first, so a server with several
        key types shows the one we know. Pinned: only those (a pinned file that names this
        host allows nothing else)."""
        known, _ = self._match("")
        first = [alg.decode("ascii") for key in known for alg in key.sig_algorithms]
        rest = [alg.decode("ascii") for alg in get_default_public_key_algs()]
        if self.pinned is not None and first:
            rest = []
        return list(dict.fromkeys(first + rest))

    def check(self, addr: str, key: asyncssh.SSHKey) -> None:
        """Accept `key` for this server, or raise `HostKeyError` saying why not."""
        if key in self._accepted:
            return  # the same key again (a re-key during a long upload)
        trusted, revoked = self._match(addr)
        seen = fingerprint(key)
        if key in revoked:
            raise HostKeyError(
                f"WARNING: the server {self.server} presented the key {seen}, which is marked "
                f"as revoked; {_INTERCEPT}"
            )
        if key in trusted:
            self._accepted.add(key)
            return
        if self.pinned is not None:
            if not trusted:
                raise HostKeyError(
                    f"the known-hosts file {self.pinned} has no key for {self.server} (the "
                    f"server presented {seen}); ask your admin for the right file; "
                    "nothing was sent"
                )
            raise HostKeyError(
                f"WARNING: the server {self.server} presented the key {seen}, which is not the "
                f"one pinned in {self.pinned} ({_fingerprints(trusted)}); {_INTERCEPT}"
            )
        if trusted:
            raise HostKeyError(
                f"WARNING: THE IDENTITY OF THE SERVER {self.server} HAS CHANGED: it presented "
                f"the key {seen}, but it used to have {_fingerprints(trusted)}; {_INTERCEPT}"
            )
        self._first_use(key, seen)

    def _first_use(self, key: asyncssh.SSHKey, seen: str) -> None:
        if self.ask is None:
            raise HostKeyError(
                f"the server {self.server} is not known yet (its key is {seen}); check that "
                "fingerprint with your admin and trust it by running 'dittohead send' in a "
                "terminal, or use --known-hosts; nothing was sent"
            )
        if not self.ask(self.server, seen, key.get_algorithm()):
            raise HostKeyError(
                f"you did not trust the server {self.server} ({seen}); nothing was sent"
            )
        self._accepted.add(key)
        self._remember(key)

    def _remember(self, key: asyncssh.SSHKey) -> None:
        public = key.export_public_key("openssh").decode("ascii").strip()
        line = f"{host_pattern(self.host, self.port)} {public}\n"
        try:
            self.user_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            existing = _read_text(self.user_file)
            if existing and not existing.endswith("\n"):
                line = "\n" + line  # never glue our entry onto a hand-edited last line
            # Append, like OpenSSH: entries for other servers stay as they are.
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
            fd = os.open(self.user_file, flags, 0o600)
            with os.fdopen(fd, "ab") as f:
                f.write(line.encode("utf-8"))
        except OSError as exc:
            # The collector said yes; refusing now would help nobody. They are asked again.
            log.warning("could not remember the server's key in %s", describe_os_error(exc))
