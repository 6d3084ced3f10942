"""Delivering a send, end to end: the real CLI against a real (in-process) SSH server.

Each test runs ``dittohead send`` the way a collector does (``cli.main`` in this process, with
stdin and the password prompt replaced) against the fake receiver from conftest, which parses
what arrives with the standard ``tarfile`` module and answers with a receipt or an error.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import io
import json
import os
import shutil
import socket
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from dittohead.client import api, cli, deliver
from dittohead.client.pack import Pack
from dittohead.client.plan.scan import scan
from dittohead.client.plan.state import default_state_file, user_known_hosts
from dittohead.client.transport import login
from dittohead.core.errors import (
    HostKeyError,
    TransferError,
)
from dittohead.core.manifest import MANIFEST_PATH
from dittohead.core.receipt import Receipt
from tests.integration.harness import require

from .conftest import (
    FILES,
    SOURCE,
    STUDY,
    USER,
    FakeReceiver,
    MakeServer,
    carried_by,
    keyed,
    pin,
    run_cli,
    write_tree,
)


class Console:
    """What the collector types: answers for stdin and the password prompt, counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.passwords: list[str | None] = []
        self.password_prompts: list[str] = []
        self.monkeypatch = monkeypatch
        self.stdin("")
        monkeypatch.setattr(getpass, "getpass", self._getpass)
        monkeypatch.setattr(cli, "have_terminal", lambda: True)  # getpass is the terminal

    def stdin(self, text: str) -> None:
        self.monkeypatch.setattr("sys.stdin", io.StringIO(text))

    def _getpass(self, prompt: str = "", stream: Any = None) -> str:
        self.password_prompts.append(prompt)
        answer = self.passwords.pop(0) if self.passwords else None
        if answer is None:
            raise EOFError
        return answer


@pytest.fixture(autouse=True, params=["openssh", "asyncssh"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with each SSH client a send can use (see `deliver`): OpenSSH's
    ``ssh`` where it can work unasked, falling back to asyncssh; and asyncssh alone."""
    if request.param == "asyncssh":
        monkeypatch.setenv("DITTOHEAD_SSH", "builtin")
    else:
        require(shutil.which("ssh") is not None, "openssh-client is not installed")
        monkeypatch.delenv("DITTOHEAD_SSH", raising=False)
    return str(request.param)


@pytest.fixture
def console(monkeypatch: pytest.MonkeyPatch) -> Console:
    return Console(monkeypatch)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "data", FILES)


def state_file(server: FakeReceiver) -> Path:
    return Path(default_state_file(server.host, server.port, STUDY, SOURCE))


@pytest.fixture
def argv(key_server: FakeReceiver, folder: Path, identity: Path, tmp_path: Path) -> list[str]:
    """``dittohead send`` of `folder` to `key_server`, logging in with a key, host key pinned."""
    return keyed(key_server, folder, identity, tmp_path)


# -- a successful send ------------------------------------------------------------------------


def test_key_auth_send_stores_receipt_and_state(
    key_server: FakeReceiver, argv: list[str], capsys: pytest.CaptureFixture[str], transport: str
) -> None:
    assert cli.main(argv) == 0
    # With a key and a known host key, OpenSSH carries it when it is there.
    assert carried_by(key_server) == ["OpenSSH" if transport == "openssh" else "AsyncSSH"]

    out, err = capsys.readouterr()
    [upload] = key_server.uploads
    assert upload.problems == []
    assert upload.command == f"dittohead upload v1 {STUDY} {SOURCE}"
    assert upload.user == USER
    assert upload.files == FILES
    assert f"{SOURCE}-20260101T000000Z-0001" in out
    assert "3 (" in out and STUDY in out and SOURCE in out
    state = json.loads(state_file(key_server).read_text())
    assert set(state["files"]) == set(FILES)
    assert err == ""  # stderr is not a terminal here: no progress line


def test_the_cipher_is_aes_gcm_and_compression_is_off(
    key_server: FakeReceiver, argv: list[str]
) -> None:
    assert cli.main(argv) == 0
    [conn] = key_server.connections
    assert conn["recv_cipher"] == "aes128-gcm@openssh.com"
    assert conn["send_cipher"] == "aes128-gcm@openssh.com"
    assert conn["recv_compression"] == conn["send_compression"] == "none"


def test_json_output_is_exactly_one_receipt_object(
    key_server: FakeReceiver, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*argv[:-1], "--json", argv[-1]]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)  # fails on anything besides one JSON document
    assert out.count("\n") == 1
    # DESIGN's keys (uploads, files, bytes, study, source), the last receipt's other fields,
    # and every receipt: nothing else
    assert set(doc) == {*Receipt.__slots__, "uploads", "receipts"}
    assert doc["uploads"] == [doc["upload"]] == [r["upload"] for r in doc["receipts"]]
    assert doc["files"] == len(FILES)
    assert doc["bytes"] == sum(len(c) for c in FILES.values())
    upload = key_server.uploads[0]
    assert doc["manifest_sha256"] == hashlib.sha256(upload.manifest).hexdigest()


def test_resending_only_sends_what_changed_and_nothing_new_does_not_connect(
    key_server: FakeReceiver, folder: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 0
    capsys.readouterr()

    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"nothing new to send: all {len(FILES)} files were already confirmed" in out
    assert len(key_server.connections) == 1  # no second connection

    assert cli.main([*argv[:-1], "--json", argv[-1]]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {
        "upload": None,
        "uploads": [],
        "files": 0,
        "bytes": 0,
        "study": STUDY,
        "source": SOURCE,
        "nothing_to_send": True,
    }
    assert len(key_server.connections) == 1

    (folder / "eprime" / "s03.txt").write_bytes(b"three")
    assert cli.main(argv) == 0
    assert len(key_server.uploads) == 2
    assert key_server.uploads[1].files == {"eprime/s03.txt": b"three"}
    # the folder holding the new file is sent along so the receiver can place it
    assert ("eprime", "dir") in key_server.uploads[1].members


def test_things_limit_the_send_to_those_subfolders(
    key_server: FakeReceiver, folder: Path, identity: Path, tmp_path: Path
) -> None:
    argv = keyed(key_server, folder, identity, tmp_path, things=("biopac",))
    assert cli.main(argv) == 0
    assert key_server.uploads[0].files == {"biopac/r.acq": b"\x00\xff"}


def test_login_noise_before_the_receipt_is_tolerated(
    make_server: MakeServer,
    client_key: asyncssh.SSHKey,
    folder: Path,
    identity: Path,
    tmp_path: Path,
) -> None:
    server = make_server(authorized={USER: [client_key.convert_to_public()]}, mode="noise")
    argv = keyed(server, folder, identity, tmp_path)
    assert cli.main(argv) == 0


def test_send_folder_is_the_library_entry_point(
    key_server: FakeReceiver, folder: Path, identity: Path, tmp_path: Path
) -> None:
    options = {
        "port": key_server.port,
        "identity": identity,
        "known_hosts": pin(key_server, tmp_path),
        "state": tmp_path / "state.json",
        "study": STUDY,
        "source": SOURCE,
        "folder": folder,
        "things": ["eprime"],
    }
    receipt = api.send_folder(key_server.host, user=USER, **options)  # type: ignore[arg-type]
    assert receipt is not None
    assert receipt.files == 2 and receipt.study == STUDY
    assert (tmp_path / "state.json").exists()
    # the same again: nothing new, no connection, no receipt
    assert api.send_folder(key_server.host, **options) is None  # type: ignore[arg-type]
    assert len(key_server.connections) == 1


# -- passwords --------------------------------------------------------------------------------


@pytest.mark.parametrize("kbdint", [True, False], ids=["keyboard-interactive", "password"])
def test_password_auth_after_two_wrong_tries(
    make_server: MakeServer,
    folder: Path,
    tmp_path: Path,
    console: Console,
    monkeypatch: pytest.MonkeyPatch,
    kbdint: bool,
) -> None:
    server = make_server(passwords={USER: "right"}, kbdint=kbdint)
    console.passwords = ["wrong", "also wrong", "right"]
    challenges: list[object] = []
    real = login.LoginClient.kbdint_challenge_received

    def spy(self: Any, *args: Any) -> Any:
        challenges.append(args)
        return real(self, *args)

    monkeypatch.setattr(login.LoginClient, "kbdint_challenge_received", spy)
    assert cli.main(run_cli(server, folder, "--known-hosts", str(pin(server, tmp_path)))) == 0
    assert bool(challenges) == kbdint  # PAM-style servers ask through keyboard-interactive
    assert [pw for _, pw in server.password_attempts] == ["wrong", "also wrong", "right"]
    assert all(f"{USER}@{server.host}" in p for p in console.password_prompts)
    assert len(server.uploads) == 1
    # OpenSSH (BatchMode) never asks for a password: it gives up and asyncssh asks.
    assert carried_by(server) == ["AsyncSSH"]


def test_three_wrong_passwords_give_up_clearly(
    make_server: MakeServer,
    folder: Path,
    tmp_path: Path,
    console: Console,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = make_server(passwords={USER: "right"})
    console.passwords = ["a", "b", "c", "d", "e"]
    code = cli.main(run_cli(server, folder, "--known-hosts", str(pin(server, tmp_path))))
    err = capsys.readouterr().err
    assert code == TransferError.exit_code
    assert len(server.password_attempts) == 3
    assert len(console.password_prompts) == 3
    assert f"could not log in to {server.host} as {USER}: wrong password (tried 3 times)" in err
    assert server.uploads == []
    assert not state_file(server).exists()


def test_no_password_given_is_a_clear_refusal(
    make_server: MakeServer,
    folder: Path,
    tmp_path: Path,
    console: Console,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = make_server(passwords={USER: "right"})
    console.passwords = [None]  # Ctrl-D at the prompt
    code = cli.main(run_cli(server, folder, "--known-hosts", str(pin(server, tmp_path))))
    assert code == TransferError.exit_code
    assert "no password was given" in capsys.readouterr().err


@pytest.mark.parametrize("kbdint", [True, False], ids=["keyboard-interactive", "password"])
def test_a_refused_identity_is_said_to_be_refused_and_no_password_is_asked(
    make_server: MakeServer,
    folder: Path,
    identity: Path,
    tmp_path: Path,
    console: Console,
    capsys: pytest.CaptureFixture[str],
    kbdint: bool,
) -> None:
    # The server knows another key for this user, and would take a password too.
    other = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
    server = make_server(passwords={USER: "pw"}, authorized={USER: [other]}, kbdint=kbdint)
    console.passwords = ["pw"]
    code = cli.main(keyed(server, folder, identity, tmp_path))
    err = capsys.readouterr().err
    assert code == TransferError.exit_code
    [line] = err.splitlines()
    assert line.startswith(f"dittohead: could not log in to {server.host} as {USER}: ")
    assert f"the server does not accept the key {identity} for {USER}" in line
    assert f"{identity}.pub" in line and "password" not in line
    assert console.password_prompts == [] and server.password_attempts == []
    assert server.uploads == []


# -- host keys --------------------------------------------------------------------------------


def test_a_pinned_key_is_used_without_asking(
    make_server: MakeServer, folder: Path, tmp_path: Path, console: Console
) -> None:
    server = make_server(passwords={USER: "pw"})
    console.passwords = ["pw"]
    assert cli.main(run_cli(server, folder, "--known-hosts", str(pin(server, tmp_path)))) == 0
    assert not user_known_hosts().exists()  # pinned mode does not learn keys


def test_a_pinned_hashed_entry_works(
    key_server: FakeReceiver, folder: Path, identity: Path, tmp_path: Path, transport: str
) -> None:
    server = key_server
    salt = os.urandom(20)
    name = f"[{server.host}]:{server.port}".encode()
    hashed = hmac.new(salt, name, "sha1").digest()
    line = f"|1|{b64encode(salt).decode()}|{b64encode(hashed).decode()} "
    path = tmp_path / "hashed"
    path.write_text(line + server.public_key.export_public_key().decode())
    argv = run_cli(server, folder, "--identity", str(identity), "--known-hosts", str(path))
    assert cli.main(argv) == 0
    # OpenSSH reads the hashed entry itself: no fallback was needed.
    assert carried_by(server) == ["OpenSSH" if transport == "openssh" else "AsyncSSH"]


def test_a_key_that_is_not_the_pinned_one_is_refused_before_any_password(
    make_server: MakeServer,
    folder: Path,
    tmp_path: Path,
    console: Console,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = make_server(passwords={USER: "pw"})
    other = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
    console.passwords = ["pw"]
    code = cli.main(run_cli(server, folder, "--known-hosts", str(pin(server, tmp_path, other))))
    err = capsys.readouterr().err
    assert code == HostKeyError.exit_code
    assert server.public_key.get_fingerprint("sha256") in err
    assert other.get_fingerprint("sha256") in err
    assert "intercepting" in err and "nothing was sent" in err
    assert server.password_attempts == [] and console.password_prompts == []
    assert server.uploads == []


def test_trust_on_first_use_yes_remembers_the_key(
    make_server: MakeServer,
    folder: Path,
    console: Console,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = make_server(passwords={USER: "pw"})
    console.stdin("yes\n")
    console.passwords = ["pw"]
    assert cli.main(run_cli(server, folder)) == 0
    err = capsys.readouterr().err
    assert server.public_key.get_fingerprint("sha256") in err
    assert "Trust this server and continue? [yes/no]" in err
    known = asyncssh.import_known_hosts(user_known_hosts().read_text())
    assert server.public_key in known.match(server.host, "", server.port)[0]

    # next time: known and matching, nobody is asked
    (folder / "new.txt").write_bytes(b"new")
    console.stdin("")
    console.passwords = ["pw"]
    assert cli.main(run_cli(server, folder)) == 0
    assert "Trust this server" not in capsys.readouterr().err
    assert len(server.uploads) == 2


@pytest.mark.parametrize("answer", ["no\n", "", "maybe\n"], ids=["no", "eof", "other"])
def test_trust_on_first_use_anything_but_yes_refuses(
    make_server: MakeServer,
    folder: Path,
    console: Console,
    capsys: pytest.CaptureFixture[str],
    answer: str,
) -> None:
    server = make_server(passwords={USER: "pw"})
    console.stdin(answer)
    console.passwords = ["pw"]
    code = cli.main(run_cli(server, folder))
    assert code == HostKeyError.exit_code
    assert "did not trust" in capsys.readouterr().err
    assert not user_known_hosts().exists()
    assert server.password_attempts == [] and server.uploads == []


def test_a_changed_host_key_is_refused_loudly_before_the_password_is_sent(
    make_server: MakeServer,
    folder: Path,
    console: Console,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = make_server(passwords={USER: "pw"})
    old = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
    user_known_hosts().parent.mkdir(parents=True)
    user_known_hosts().write_text(server.known_hosts_line(old))
    console.stdin("yes\n")  # even a collector who would say yes is not asked
    console.passwords = ["pw"]

    code = cli.main(run_cli(server, folder))

    err = capsys.readouterr().err
    assert code == HostKeyError.exit_code
    assert "HAS CHANGED" in err and "intercepting" in err and "nothing was sent" in err
    assert server.public_key.get_fingerprint("sha256") in err
    assert old.get_fingerprint("sha256") in err
    assert "Trust this server" not in err
    assert server.password_attempts == []  # the server never saw a password
    assert console.password_prompts == []
    assert server.uploads == []
    assert user_known_hosts().read_text() == server.known_hosts_line(old)


def test_an_entry_for_another_port_does_not_count_as_this_server(
    make_server: MakeServer, folder: Path, console: Console
) -> None:
    server = make_server(passwords={USER: "pw"})
    other = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
    user_known_hosts().parent.mkdir(parents=True)
    # the same host on port 22 has another key: that is another server, not a changed key
    user_known_hosts().write_text(f"{server.host} {other.export_public_key().decode()}")
    console.stdin("yes\n")
    console.passwords = ["pw"]
    assert cli.main(run_cli(server, folder)) == 0


def test_library_callers_cannot_trust_an_unknown_server_silently(
    key_server: FakeReceiver, folder: Path, identity: Path
) -> None:
    with pytest.raises(HostKeyError, match="not known yet"):
        api.send_folder(
            key_server.host,
            port=key_server.port,
            identity=identity,
            study=STUDY,
            source=SOURCE,
            folder=folder,
        )
    assert key_server.uploads == []


# -- failures leave the state alone -----------------------------------------------------------


def _prepare_state(server: FakeReceiver, folder: Path) -> bytes:
    """A state file that confirms one of the files (so there is something to protect)."""
    path = state_file(server)
    path.parent.mkdir(parents=True, exist_ok=True)
    st_ = (folder / "biopac" / "r.acq").stat()
    doc = {
        "version": 1,
        "server": f"{server.host}:{server.port}",
        "study": STUDY,
        "source": SOURCE,
        "files": {"biopac/r.acq": [st_.st_size, st_.st_mtime_ns]},
    }
    path.write_text(json.dumps(doc))
    return path.read_bytes()


@pytest.mark.parametrize("status", [65, 77])
def test_a_server_refusal_shows_its_words_and_exit_code(
    make_server: MakeServer,
    client_key: asyncssh.SSHKey,
    folder: Path,
    identity: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    status: int,
    transport: str,
) -> None:
    server = make_server(
        authorized={USER: [client_key.convert_to_public()]},
        mode="fail",
        fail_status=status,
        fail_line="dittohead: you may not upload to study nccam3; ask your admin",
    )
    before = _prepare_state(server, folder)
    argv = keyed(server, folder, identity, tmp_path)
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == status
    # The server's refusal is final: never tried again through the other SSH client.
    assert carried_by(server) == ["OpenSSH" if transport == "openssh" else "AsyncSSH"]
    assert (
        err.strip().splitlines()[-1]
        == "dittohead: you may not upload to study nccam3; ask your admin"
    )
    assert out == ""
    assert state_file(server).read_bytes() == before


def test_a_server_that_refuses_without_reading_does_not_hang_the_client(
    make_server: MakeServer,
    client_key: asyncssh.SSHKey,
    tmp_path: Path,
    identity: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = make_server(
        authorized={USER: [client_key.convert_to_public()]},
        mode="early",
        fail_status=77,
        fail_line="dittohead: you are not allowed to upload to nccam3",
    )
    big = write_tree(tmp_path / "big", {"a.bin": os.urandom(6 << 20), "b.bin": os.urandom(6 << 20)})
    code = cli.main(keyed(server, big, identity, tmp_path))
    assert code == 77
    assert "dittohead: you are not allowed to upload to nccam3" in capsys.readouterr().err
    assert not state_file(server).exists()


def test_a_lying_receipt_is_refused_and_nothing_is_recorded(
    make_server: MakeServer,
    client_key: asyncssh.SSHKey,
    folder: Path,
    identity: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = make_server(authorized={USER: [client_key.convert_to_public()]}, mode="lie")
    before = _prepare_state(server, folder)
    argv = keyed(server, folder, identity, tmp_path)
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == TransferError.exit_code
    assert "does not match what was sent" in err
    assert state_file(server).read_bytes() == before
    assert len(server.uploads) == 1  # it was sent, but not confirmed


def _state_folder(server: FakeReceiver) -> dict[str, bytes]:
    """Every file in the state's folder with its content (temporary files included)."""
    folder = state_file(server).parent
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


@pytest.mark.parametrize("mode", ["lie", "fail"])
def test_no_valid_receipt_leaves_the_state_folder_as_it_was(
    make_server: MakeServer,
    client_key: asyncssh.SSHKey,
    folder: Path,
    identity: Path,
    tmp_path: Path,
    mode: str,
) -> None:
    # The new state is written while the receiver checks the upload: without a valid receipt
    # it must vanish again, leaving the old state file and no temporary file.
    server = make_server(authorized={USER: [client_key.convert_to_public()]}, mode=mode)
    _prepare_state(server, folder)
    before = _state_folder(server)
    assert cli.main(keyed(server, folder, identity, tmp_path)) != 0
    assert _state_folder(server) == before


def test_an_interrupt_while_waiting_for_the_receipt_leaves_the_state_as_it_was(
    key_server: FakeReceiver,
    folder: Path,
    identity: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _prepare_state(key_server, folder)
    before = _state_folder(key_server)
    real_stage = deliver._Record.stage

    def stage_then_ctrl_c(self: deliver._Record) -> None:
        real_stage(self)
        assert self.staged is not None  # the temporary file exists now
        raise KeyboardInterrupt

    monkeypatch.setattr(deliver._Record, "stage", stage_then_ctrl_c)
    assert cli.main(keyed(key_server, folder, identity, tmp_path)) == cli.EX_INTERRUPTED
    assert _state_folder(key_server) == before


def test_the_state_is_written_while_the_receipt_is_awaited_and_records_what_was_sent(
    make_server: MakeServer,
    client_key: asyncssh.SSHKey,
    folder: Path,
    identity: Path,
    tmp_path: Path,
) -> None:
    server = make_server(authorized={USER: [client_key.convert_to_public()]})
    _prepare_state(server, folder)
    state_folder = state_file(server).parent
    # The receiver answers only once the client's temporary state file is there.
    server.hold = lambda: any(p.name.endswith(".tmp") for p in state_folder.iterdir())
    assert cli.main(keyed(server, folder, identity, tmp_path)) == 0
    assert server.held == [True]
    assert sorted(p.name for p in state_folder.iterdir()) == [state_file(server).name]
    recorded = json.loads(state_file(server).read_text())["files"]
    scanned = {f.path: [f.size, f.mtime_ns] for f in scan(folder).files}
    assert recorded == scanned  # the one confirmed before and the two sent now, exactly
    assert set(server.uploads[0].files) == set(FILES) - {"biopac/r.acq"}


def test_a_file_changing_during_the_send_stores_nothing(
    key_server: FakeReceiver,
    tmp_path: Path,
    identity: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = write_tree(tmp_path / "rec", {"a.edf": os.urandom(3 << 20)})
    real_chunks = Pack.chunks
    grown: list[bool] = []

    def chunks_then_grow(self: Pack) -> Iterator[bytes]:
        for chunk in real_chunks(self):
            yield chunk  # written to the SSH client before the next one is asked for
            if not grown and self.bytes_done >= 1 << 20:  # the first megabyte is on its way
                grown.append(True)
                with open(root / "a.edf", "ab") as f:
                    f.write(b"the experiment is still running")

    monkeypatch.setattr(Pack, "chunks", chunks_then_grow)
    code = cli.main(keyed(key_server, root, identity, tmp_path))
    err = capsys.readouterr().err
    assert code == 66
    assert "a.edf changed while it was being sent; nothing was stored" in err
    assert not state_file(key_server).exists()
    # the receiver saw an incomplete stream, without the manifest
    upload = key_server.wait_for_upload()
    assert upload.problems and upload.manifest == b""


def test_an_unreachable_server_is_explained(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a port nobody listens on: take a free one and close it again
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = cli.main(
        [
            "send",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--study",
            STUDY,
            "--source",
            SOURCE,
            str(folder),
        ]
    )
    assert code == TransferError.exit_code
    assert "refused the connection" in capsys.readouterr().err


def test_manifest_is_the_last_member_on_the_wire(key_server: FakeReceiver, argv: list[str]) -> None:
    assert cli.main(argv) == 0
    upload = key_server.uploads[0]
    names = [name for name, _ in upload.members]
    assert MANIFEST_PATH not in names  # the fake receiver takes it out, and fails if it is not last
    assert json.loads(upload.manifest)["files"] == len(FILES)
