"""``dittohead-admin check`` on the mail settings: the password file, the notify unit's
ReadWritePaths=, IPAddressAllow= and LoadCredential= (drop-ins included), and the contacts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dittohead.receiver.admin.check_cmd import Probe, check_mail
from tests.support.mail import mail_server
from tests.support.server import Server

UNITS = Path(__file__).resolve().parents[4] / "systemd"


def installed(tmp_path: Path, *drop_ins: str) -> Probe:
    """The shipped units in a unit folder of the test's, with `drop_ins` for notify."""
    units = tmp_path / "units"
    units.mkdir(parents=True)
    for name in ("dittohead-processor.service", "dittohead-notify.service"):
        shutil.copy(UNITS / name, units / name)
    if drop_ins:
        folder = units / "dittohead-notify.service.d"
        folder.mkdir()
        for i, text in enumerate(drop_ins):
            (folder / f"{i}.conf").write_text(f"[Service]\n{text}\n")
    return Probe(unit_dirs=(units,))


def lines(server: Server, probe: Probe) -> list[str]:
    return [p.line() for p in check_mail(server.config, probe)]


def test_no_mail_section_checks_nothing(server: Server, tmp_path: Path) -> None:
    assert check_mail(server.config, installed(tmp_path)) == []


def test_the_notify_unit_must_reach_the_relay_and_write_the_queue(tmp_path: Path) -> None:
    server = mail_server(tmp_path / "srv", 2525, mail={"relay": "192.0.2.25:25"})
    found = lines(server, installed(tmp_path))
    assert any(
        "may not connect to 192.0.2.25" in f and "IPAddressAllow=192.0.2.25" in f for f in found
    )
    assert any("may not write here" in f for f in found)
    fixed = installed(
        tmp_path / "fixed",
        "IPAddressAllow=192.0.2.0/24",
        f"ReadWritePaths={server.config.state_dir}",
    )
    assert lines(server, fixed) == []


def test_a_local_relay_passes_the_shipped_unit(tmp_path: Path) -> None:
    server = mail_server(tmp_path / "srv", 25)  # 127.0.0.1: localhost is allowed as shipped
    found = lines(server, installed(tmp_path, f"ReadWritePaths={server.config.state_dir}"))
    assert found == []


def test_a_missing_notify_unit_is_named_where_the_processor_is_installed(tmp_path: Path) -> None:
    server = mail_server(tmp_path / "srv", 25)
    probe = installed(tmp_path)
    (probe.unit_dirs[0] / "dittohead-notify.service").unlink()
    assert [p.what for p in check_mail(server.config, probe)] == [
        "not installed, so the queued notices are never mailed"
    ]


@pytest.mark.root
def test_the_password_file_must_be_root_only_and_handed_over(tmp_path: Path) -> None:
    secret = tmp_path / "smtp-password"
    server = mail_server(
        tmp_path / "srv",
        25,
        mail={"username": "dittohead", "password_file": str(secret)},
    )
    rw = f"ReadWritePaths={server.config.state_dir}/notices"
    found = lines(server, installed(tmp_path / "a", rw))
    assert any("the relay password file is missing" in f for f in found)
    secret.write_text("hunter2\n")
    os.chmod(secret, 0o640)
    found = lines(server, installed(tmp_path / "b", rw))
    assert any("mode 0640" in f and "chmod 0600" in f for f in found)
    assert any("LoadCredential=smtp-password:" in f for f in found)
    os.chmod(secret, 0o600)
    good = installed(tmp_path / "c", rw, f"LoadCredential=smtp-password:{secret}")
    assert lines(server, good) == []


def test_a_contact_that_is_no_address_is_named(tmp_path: Path) -> None:
    server = mail_server(tmp_path / "srv", 25)
    doc = server.config.model_dump(mode="json")
    doc["studies"]["nccam3"]["notify"] = ["pi at lab"]
    from dittohead.receiver.config.model import Config

    bad = Server(server.base, server.config_path, Config.model_validate(doc))
    assert any("'pi at lab' is not a mail address" in f for f in lines(bad, installed(tmp_path)))
