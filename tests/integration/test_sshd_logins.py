"""Logins that go wrong, over the real sshd, as a collector meets them on the first day.

A key the server does not accept for the account, and an account the server has but that is no
collector (no ``Match Group`` block forces the receiver on it: sshd runs its shell). Each time:
one line in dittohead's words, saying what is wrong and whom to ask, whichever SSH client
carried the attempt; nothing reaches the dropbox.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Deployment, run

pytestmark = [pytest.mark.sshd, pytest.mark.root]

TRANSPORTS = pytest.mark.parametrize("ssh", [None, "builtin"], ids=["openssh", "asyncssh"])


@pytest.fixture(scope="module")
def plain_user(sshd_deployment: Deployment) -> Iterator[str]:
    """An ordinary shell account with a key sshd accepts, in no uploader group."""
    dep = sshd_deployment
    name = dep.accounts.user("plain", dep.base / "home")
    keys = dep.base / "keys"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / name)
    (keys / f"{name}.authorized").write_text((keys / f"{name}.pub").read_text())
    yield name


def folder(dep: Deployment, name: str) -> Path:
    path = dep.base / "pc" / name
    (path / "eprime").mkdir(parents=True, exist_ok=True)
    (path / "eprime" / "s01.txt").write_text("subject 1\n")
    return path


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("dittohead: ") and "Traceback" not in stderr
    return lines[0]


@TRANSPORTS
def test_a_key_the_server_does_not_accept_is_named_and_no_password_is_asked(
    sshd_deployment: Deployment, ssh: str | None
) -> None:
    dep = sshd_deployment
    wrong = dep.key(dep.outsider)  # a real key, but not the collector's
    # The collector's account also has a password, and sshd takes passwords: still not asked.
    done = dep.send(
        dep.collector, folder(dep, "wrongkey"), "--identity", str(wrong), ssh=ssh,
    )  # fmt: skip
    assert done.returncode == 69
    line = one_line(done.stderr)
    assert f"could not log in to 127.0.0.1 as {dep.collector}" in line
    assert f"the server does not accept the key {wrong} for {dep.collector}" in line
    assert "password" not in line.lower()
    assert os.listdir(dep.inbox) == []


@TRANSPORTS
def test_an_account_that_is_not_a_collector_is_told_so(
    sshd_deployment: Deployment, plain_user: str, ssh: str | None
) -> None:
    dep = sshd_deployment
    done = dep.send(plain_user, folder(dep, "plain"), ssh=ssh)
    assert done.returncode == 77, done.stderr
    line = one_line(done.stderr)
    assert line == (
        f"dittohead: the account {plain_user} on 127.0.0.1 is not set up for dittohead: the "
        "server answered with an ordinary shell instead of dittohead's receiver; ask your "
        f"admin to add {plain_user} to the study's uploader group; nothing was sent"
    )
    assert "command not found" not in done.stderr
    assert done.stdout == ""
    assert os.listdir(dep.inbox) == []
