"""`dittohead-admin sshd-config` and `authorized-key` print exactly the lines that lock a
collector into the receiver (the real sshd tier runs them against OpenSSH)."""

from __future__ import annotations

import shlex
from pathlib import Path

import asyncssh
import pytest

from dittohead.receiver.admin.sshd_cmd import (
    SSHD_OPTIONS,
    KeyFileError,
    authorized_key,
    receiver_command,
    sshd_config,
)
from dittohead.receiver.config.model import parse_config

CONFIG = parse_config(
    {
        "dropbox": "/srv/dittohead",
        "studies": {
            "a": {"destination": "/study/a", "uploaders": ["g2", "g1"]},
            "b": {"destination": "/study/b", "uploaders": ["g1"]},
        },
    },
    "t.yaml",
)


def test_the_receiver_command_is_isolated_and_absolute() -> None:
    argv = shlex.split(receiver_command(Path("/etc/dittohead/dittohead.yaml"), "/usr/bin/python3"))
    assert argv == [
        "/usr/bin/python3", "-I", "-X", "utf8", "-m", "dittohead.receiver.upload.receive",
        "--config", "/etc/dittohead/dittohead.yaml",
    ]  # fmt: skip


def test_sshd_config_matches_every_uploader_group_and_disables_the_rest() -> None:
    text = sshd_config(CONFIG, Path("/etc/dittohead/dittohead.yaml"))
    lines = [line.strip() for line in text.splitlines() if not line.startswith("#")]
    assert lines[0] == "Match Group g1,g2"
    assert lines[1].startswith("ForceCommand ") and "dittohead.receiver.upload.receive" in lines[1]
    assert set(SSHD_OPTIONS) <= set(lines)
    assert {"DisableForwarding yes", "PermitTTY no", "PermitUserRC no"} <= set(lines)


def test_authorized_key_line(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519", comment="alice@pc")
    pub = tmp_path / "alice.pub"
    pub.write_bytes(key.export_public_key("openssh"))
    line = authorized_key(Path("/etc/dittohead/dittohead.yaml"), pub)
    options, _, rest = line.partition('" ')
    assert options.startswith('restrict,command="')
    assert "-m dittohead.receiver.upload.receive --config /etc/dittohead/dittohead.yaml" in options
    assert asyncssh.import_public_key(rest) == key.convert_to_public()
    assert line.endswith("\n") and line.count("\n") == 1


@pytest.mark.parametrize(
    ("content", "why"),
    [("", "exactly one public key"), ("not a key\n", "does not hold an OpenSSH public key")],
)
def test_authorized_key_refuses_what_is_not_one_key(tmp_path: Path, content: str, why: str) -> None:
    pub = tmp_path / "x.pub"
    pub.write_text(content)
    with pytest.raises(KeyFileError, match=why):
        authorized_key(Path("/etc/d.yaml"), pub)


def test_authorized_key_refuses_two_keys(tmp_path: Path) -> None:
    keys = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(2)]
    pub = tmp_path / "two.pub"
    pub.write_bytes(b"".join(k.export_public_key("openssh") for k in keys))
    with pytest.raises(KeyFileError, match="exactly one public key"):
        authorized_key(Path("/etc/d.yaml"), pub)


@pytest.mark.parametrize("fmt", ["openssh", "pkcs8-pem"])
def test_a_private_key_is_named_as_one_and_the_pub_file_is_asked_for(
    tmp_path: Path, fmt: str
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    private = tmp_path / "id_ed25519"
    private.write_bytes(key.export_private_key(fmt))
    key.write_public_key(str(tmp_path / "id_ed25519.pub"))
    with pytest.raises(KeyFileError) as caught:
        authorized_key(Path("/etc/d.yaml"), private)
    message = caught.value.message
    assert message.startswith(f"{private} is a private key")
    assert f"give its public half, {private}.pub" in message
    assert "BEGIN" not in message and "exactly one" not in message
