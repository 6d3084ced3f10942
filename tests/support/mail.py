"""A real SMTP relay for the tests (aiosmtpd in a thread on 127.0.0.1) and a server whose
configuration mails through it.

The relay records every message it accepted (envelope recipients and the parsed mail) and
refuses, with a permanent 550, the recipients listed in ``refuse``: the one thing a relay does
that the tests must provoke on purpose.
"""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import yaml
from aiosmtpd.controller import Controller

from dittohead.receiver.config.model import load_config
from tests.support.server import STUDY, Server, make_server

CONTACT = "pi@lab.example.org"
ADMIN = "admin@lab.example.org"


@dataclass
class Received:
    recipients: list[str]
    message: EmailMessage

    @property
    def text(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        return str(part.get_content())


@dataclass
class Handler:
    refuse: set[str] = field(default_factory=set)
    received: list[Received] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.received.append(Received(list(envelope.rcpt_tos), msg))
        return "250 Message accepted"

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.recipients]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Relay:
    """An aiosmtpd relay on `port`, started and stopped by the test (down, then up)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.handler = Handler()
        self.controller: Controller | None = None

    def start(self) -> Relay:
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


def relay_fixture() -> Iterator[Relay]:
    relay = Relay(free_port()).start()
    try:
        yield relay
    finally:
        relay.stop()


def mail_server(base: Path, port: int, **changes: Any) -> Server:
    """`make_server`'s deployment with a ``mail:`` section pointing at 127.0.0.1:`port`, the
    study's contact `CONTACT`, and `changes` merged in (``mail`` keys under ``mail``)."""
    server = make_server(base)
    doc = yaml.safe_load(server.config_path.read_text())
    doc["mail"] = {
        "relay": f"127.0.0.1:{port}",
        "sender": "dittohead@lab.example.org",
        "uploader_address": "{user}@lab.example.org",
        "admins": [ADMIN],
        **changes.pop("mail", {}),
    }
    doc["studies"][STUDY]["notify"] = [CONTACT]
    # The test machine's own disk may well be 90 % full: only the disk tests ask for levels.
    doc["disk"] = {"warn_percent": [100]}
    doc.update(changes)
    server.config_path.write_text(yaml.safe_dump(doc))
    server.config = load_config(server.config_path)
    return server
