"""``dittohead-notify`` against a real SMTP relay (aiosmtpd on 127.0.0.1): the right people get
plain-text mails a PI understands, nothing is lost while the relay is down, a refused
recipient blocks nobody, a burst becomes a digest, and a kill between the relay's acceptance
and the record of it costs at most one duplicate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dittohead.core.errors import ConfigError
from dittohead.receiver.notify import cli
from dittohead.receiver.notify.queue import Queue
from dittohead.receiver.notify.relay import RelayDown, read_password
from dittohead.receiver.processor.finalize import run_once
from tests.support.mail import ADMIN, CONTACT, Relay, free_port, mail_server, relay_fixture
from tests.support.server import STUDY, Server

REPO = Path(__file__).resolve().parents[4]


@pytest.fixture
def relay() -> Iterator[Relay]:
    yield from relay_fixture()


def uploader_address() -> str:
    import pwd

    return f"{pwd.getpwuid(os.getuid()).pw_name}@lab.example.org"


def left(server: Server) -> list[str]:
    return sorted(p.name for p in (server.config.state_dir / "notices" / "queue").glob("*.json"))


def deliver(server: Server, now: float = 1e9) -> cli.Round:
    return cli.deliver(server.config, Queue(server.config.state_dir), now)


def test_a_success_mail_goes_to_the_contacts_and_the_uploader(tmp_path: Path, relay: Relay) -> None:
    server = mail_server(tmp_path, relay.port, mail={"on_success": True})
    files = {f"eprime/s{i:02}.txt": f"subject {i}".encode() for i in range(8)}
    name = server.commit(files)
    run_once(server.config)
    result = deliver(server)
    assert (result.sent, result.refused, result.left) == (2, 0, 0)
    got = relay.handler.received
    assert sorted(r.recipients[0] for r in got) == sorted([CONTACT, uploader_address()])
    assert relay.handler.to(ADMIN) == []  # admins hear about trouble, not about successes
    mail = relay.handler.to(CONTACT)[0]
    assert (
        mail.message["Subject"] == f"[dittohead] {STUDY}: 8 files from Brogden A (brogden-a) stored"
    )
    assert mail.message["From"] == "dittohead <dittohead@lab.example.org>"
    text = mail.text
    for words in (
        f"Study:     {STUDY}",
        "Station:   Brogden A (brogden-a)",
        f"Upload id: {name}",
        "Files:     8 (8 stored, 0 already there",
        "Stored as (the first 5):",
        "  eprime/s00.txt",
        "... and 3 more",
        " UTC)",
    ):
        assert words in text, text
    assert left(server) == []
    assert deliver(server).sent == 0  # delivered once


def test_without_on_success_only_the_quarantine_is_mailed(tmp_path: Path, relay: Relay) -> None:
    server = mail_server(tmp_path, relay.port)
    server.commit({"ok.txt": b"fine"})
    name = server.commit({"a.txt": b"a"}, manifest={"files": 2, "bytes": 1, "entries": []})
    run_once(server.config)
    result = deliver(server)
    assert result.sent == 3
    assert sorted(r.recipients[0] for r in relay.handler.received) == sorted(
        [CONTACT, ADMIN, uploader_address()]
    )
    mail = relay.handler.to(CONTACT)[0]
    assert "NOT stored (quarantined)" in mail.message["Subject"]
    for words in ("What happened:", "What to do:", name, "Send the folder again", "manifest"):
        assert words in mail.text, mail.text


def test_nothing_is_lost_while_the_relay_is_down(tmp_path: Path) -> None:
    relay = Relay(free_port())  # not started: the port refuses connections
    server = mail_server(tmp_path, relay.port)
    server.commit({"a.txt": b"a"}, manifest={"files": 2, "bytes": 1, "entries": []})
    run_once(server.config)
    with pytest.raises(RelayDown):
        deliver(server)
    assert len(left(server)) == 1
    code = cli.main(["--config", str(server.config_path), "--once"])
    assert code == 75
    relay.start()
    try:
        assert deliver(server).sent == 3
        assert left(server) == []
    finally:
        relay.stop()


def test_a_refused_recipient_does_not_block_the_others(tmp_path: Path, relay: Relay) -> None:
    relay.handler.refuse.add(CONTACT)
    server = mail_server(tmp_path, relay.port)
    server.commit({"a.txt": b"a"}, manifest={"files": 2, "bytes": 1, "entries": []})
    run_once(server.config)
    result = deliver(server)
    assert (result.sent, result.refused, result.left) == (2, 1, 0)
    assert sorted(r.recipients[0] for r in relay.handler.received) == sorted(
        [ADMIN, uploader_address()]
    )
    assert deliver(server, 2e9).sent == 0  # given up for good, not retried forever


def test_a_burst_becomes_a_digest(tmp_path: Path, relay: Relay) -> None:
    server = mail_server(tmp_path, relay.port, mail={"on_success": True, "uploader_address": None})
    server.commit({"first.txt": b"first"})
    run_once(server.config)
    now = 1e9
    assert deliver(server, now).sent == 1  # the first goes at once
    for i in range(60):
        server.commit({f"f{i}.txt": str(i).encode()})
    run_once(server.config)
    held = deliver(server, now + 60)
    assert held.sent == 0 and held.left == 60  # held back for the digest interval
    assert held.held == now + server.config.mail.digest_interval  # type: ignore[union-attr]
    digest = deliver(server, now + 901)
    assert (digest.sent, digest.left) == (1, 0)
    assert len(relay.handler.received) == 2
    mail = relay.handler.received[1]
    assert mail.message["Subject"] == f"[dittohead] 60 notices ({STUDY}): 60 uploads stored"
    assert mail.text.count("Station:   Brogden A") == 60


def test_a_kill_after_the_relay_accepted_costs_at_most_one_duplicate(
    tmp_path: Path, relay: Relay
) -> None:
    server = mail_server(tmp_path, relay.port, mail={"uploader_address": None, "admins": []})
    server.commit({"a.txt": b"a"}, manifest={"files": 2, "bytes": 1, "entries": []})
    run_once(server.config)
    argv = [sys.executable, "-m", "dittohead.receiver.notify.cli"]
    argv += ["--config", str(server.config_path), "--once"]
    env = {**os.environ, "DITTOHEAD_TEST_NOTIFY_CRASH": "accepted"}
    killed = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert len(relay.handler.received) == 1  # the relay has it; the queue does not know
    assert len(left(server)) == 1
    env.pop("DITTOHEAD_TEST_NOTIFY_CRASH")
    again = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, check=False)
    assert again.returncode == 0, again.stderr.decode()
    assert again.stderr.decode().count("Traceback") == 0
    assert len(relay.handler.received) == 2  # exactly one duplicate, nothing lost
    assert left(server) == []
    third = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, check=False)
    assert third.returncode == 0 and len(relay.handler.received) == 2


def test_the_loop_exits_when_nothing_is_left(tmp_path: Path, relay: Relay) -> None:
    server = mail_server(tmp_path, relay.port)
    server.commit({"a.txt": b"a"}, manifest={"files": 2, "bytes": 1, "entries": []})
    run_once(server.config)
    assert cli.run(server.config, once=False) == 0
    assert len(relay.handler.received) == 3 and left(server) == []


def test_disk_and_silence_mails_say_what_to_do(tmp_path: Path, relay: Relay) -> None:
    from dittohead.receiver.processor.notices import Notice, Outbox

    server = mail_server(tmp_path, relay.port, stations={"silent_after": "7d"})
    outbox = Outbox(server.config.state_dir)
    outbox.record(
        Notice(
            id="disk.abc.95.1",
            kind="disk",
            created=1e9,
            mount="/study",
            what="destination",
            studies=(STUDY,),
            level=95,
            percent=95.4,
        )
    )
    outbox.record(
        Notice(
            id="silent.brogden-a.1",
            kind="silent",
            created=1e9,
            source="brogden-a",
            studies=(STUDY,),
            last_seen=1e9 - 8 * 86400,
        )
    )
    assert deliver(server).sent == 2  # the contact and the admin, one digest each
    mail = relay.handler.to(CONTACT)[0]
    assert mail.message["Subject"].startswith("[dittohead] 2 notices")
    for words in ("95.4% (warning level 95%)", "Brogden A (brogden-a)", "7 days", "What to do"):
        assert words in mail.text, mail.text


def test_starttls_and_a_login_with_the_password_from_the_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relay that insists on STARTTLS and a login (aiosmtpd with a certificate for
    localhost, trusted through SSL_CERT_FILE, which OpenSSL's default paths honour)."""
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    from tests.support.mail import Handler

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"s3cret pass")

    handler = Handler()
    port = free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        authenticator=authenticator,
    )
    controller.start()
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        secret = tmp_path / "smtp-password"
        secret.write_text("wrong\n")
        credentials = tmp_path / "credentials"
        credentials.mkdir()
        (credentials / "smtp-password").write_text("s3cret pass\n")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))  # as LoadCredential=
        server = mail_server(
            tmp_path / "srv",
            port,
            mail={
                "relay": f"127.0.0.1:{port}",
                "starttls": True,
                "username": "dittohead",
                "password_file": str(secret),
            },
        )
        server.commit({"a.txt": b"a"}, manifest={"files": 2, "bytes": 1, "entries": []})
        run_once(server.config)
        assert deliver(server).sent == 3
        assert logins == [(b"dittohead", b"s3cret pass")]
        assert len(handler.received) == 3
        # Without the credential (run by hand as root) the file itself is read.
        monkeypatch.delenv("CREDENTIALS_DIRECTORY")
        assert read_password(server.config.mail) == "wrong"  # type: ignore[arg-type]
        secret.unlink()
        with pytest.raises(ConfigError, match=r"password file .* is missing"):
            read_password(server.config.mail)  # type: ignore[arg-type]
    finally:
        controller.stop()
