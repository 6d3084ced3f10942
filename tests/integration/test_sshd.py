"""The truth: a real OpenSSH sshd with ForceCommand, real Unix users, the processor as its own
service account. A collector's send lands, a changed file becomes ``name~2.ext``, an identical
re-send stores nothing new, an outsider is refused and nothing is queued."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.hostile import streams
from tests.integration.harness import Deployment, run
from tests.support.invariants import tree_files

pytestmark = [pytest.mark.sshd, pytest.mark.root]


def study_folder(dep: Deployment, name: str) -> Path:
    folder = dep.base / "pc" / name
    (folder / "eprime").mkdir(parents=True)
    (folder / "biopac").mkdir()
    (folder / "eprime" / f"{name}.txt").write_text(f"subject {name}\n")
    (folder / "biopac" / f"{name}.acq").write_bytes(os.urandom(300_000))
    return folder


def history(dep: Deployment) -> list[dict[str, object]]:
    done = dep.admin("history", "--study", dep.study, "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("dittohead: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    ("ssh", "name"), [(None, "s01"), ("builtin", "s11")], ids=["openssh", "asyncssh"]
)
def test_a_collectors_send_lands_in_the_study_tree(
    sshd_deployment: Deployment, ssh: str | None, name: str
) -> None:
    dep = sshd_deployment
    folder = study_folder(dep, name)
    sent = dep.send(dep.collector, folder, "-v", ssh=ssh)
    assert sent.returncode == 0, sent.stderr
    # Which SSH client carried it: OpenSSH's ssh when the client may use it, else asyncssh
    # (whose connection `send` logs with its cipher).
    assert ("sent through OpenSSH" in sent.stderr) == (ssh is None), sent.stderr
    assert ("(cipher aes128-gcm@openssh.com)" in sent.stderr) == (ssh == "builtin"), sent.stderr
    receipt = json.loads(sent.stdout)
    assert (receipt["files"], receipt["study"], receipt["user"]) == (2, dep.study, dep.collector)
    # Committed, owned by the collector, waiting for the processor.
    entries = os.listdir(dep.inbox)
    assert entries == [receipt["upload"]]
    assert os.stat(dep.inbox / entries[0]).st_uid == pwd_uid(dep.collector)

    done = dep.process()
    assert done.returncode == 0, done.stderr
    assert os.listdir(dep.inbox) == []
    files = tree_files(dep.destination)
    assert files[f"eprime/{name}.txt"] == f"subject {name}\n".encode()
    assert files[f"biopac/{name}.acq"] == (folder / "biopac" / f"{name}.acq").read_bytes()
    st = (dep.destination / "eprime" / f"{name}.txt").stat()
    assert st.st_uid == pwd_uid(dep.service)
    assert stat.S_IMODE(st.st_mode) == 0o440  # never writable by collectors
    records = {r["path"]: r for r in history(dep) if r["upload"] == receipt["upload"]}
    assert set(records) == {f"eprime/{name}.txt", f"biopac/{name}.acq"}
    assert all(
        r["uploader"] == dep.collector and r["outcome"] == "stored" for r in records.values()
    )


def test_a_changed_file_becomes_a_new_version(sshd_deployment: Deployment) -> None:
    dep = sshd_deployment
    folder = study_folder(dep, "s02")
    state = dep.base / "state-s02.json"
    assert dep.send(dep.collector, folder, state=state).returncode == 0
    assert dep.process().returncode == 0
    (folder / "eprime" / "s02.txt").write_text("subject s02, corrected\n")
    again = dep.send(dep.collector, folder, state=state)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["files"] == 1  # only what changed was sent
    assert dep.process().returncode == 0
    files = tree_files(dep.destination)
    assert files["eprime/s02.txt"] == b"subject s02\n"
    assert files["eprime/s02~2.txt"] == b"subject s02, corrected\n"


def test_an_identical_resend_stores_nothing_new(sshd_deployment: Deployment) -> None:
    dep = sshd_deployment
    folder = study_folder(dep, "s03")
    assert dep.send(dep.collector, folder, state=dep.base / "a.json").returncode == 0
    assert dep.process().returncode == 0
    before = tree_files(dep.destination)
    # A fresh state file: the client sends everything again; the server must notice.
    resent = dep.send(dep.collector, folder, state=dep.base / "b.json")
    assert resent.returncode == 0, resent.stderr
    upload = json.loads(resent.stdout)["upload"]
    assert dep.process().returncode == 0
    assert tree_files(dep.destination) == before
    outcomes = {r["outcome"] for r in history(dep) if r["upload"] == upload}
    assert outcomes == {"duplicate"}


def test_an_outsider_is_refused_and_nothing_is_queued(sshd_deployment: Deployment) -> None:
    dep = sshd_deployment
    folder = study_folder(dep, "s04")
    refused = dep.send(dep.outsider, folder)
    assert refused.returncode != 0
    line = one_error_line(refused.stderr)
    assert f"not an uploader for study '{dep.study}'" in line
    assert os.listdir(dep.inbox) == []


def test_a_stations_other_spelling_is_refused_with_the_known_one(
    sshd_deployment: Deployment,
) -> None:
    # The config lists brogden-a: its other spelling would start a second history and
    # re-send everything, so the receiver refuses it and names the id it knows.
    dep = sshd_deployment
    folder = study_folder(dep, "s04b")
    state = dep.base / "state-other-spelling.json"  # a state file is per server, study, source
    refused = dep.send(dep.collector, folder, "--source", "Brogden-A", state=state)
    assert refused.returncode != 0
    line = one_error_line(refused.stderr)
    assert "the station id 'Brogden-A' is not one this server knows" in line
    assert "did you mean 'brogden-a'?" in line
    assert os.listdir(dep.inbox) == []


def test_a_connection_started_early_for_a_send_then_refused_leaves_nothing(
    sshd_deployment: Deployment,
) -> None:
    """The client starts ssh at the first new file ("a.txt"); the scan then meets a name
    Windows cannot store, and the client kills that ssh: the receiver on the server sees its
    stream end without a manifest and must leave nothing behind, committed or staged."""
    dep = sshd_deployment
    folder = dep.base / "pc" / "early"
    (folder / "z").mkdir(parents=True)
    (folder / "a.txt").write_text("fine\n")
    (folder / "z" / "con.txt").write_text("reserved on Windows\n")
    sent = dep.send(dep.collector, folder, "-v")
    assert sent.returncode != 0
    assert "con.txt" in sent.stderr and "nothing was sent" in sent.stderr
    assert "running " in sent.stderr  # the debug line of the ssh it started early
    deadline = time.monotonic() + 10
    while os.listdir(dep.inbox) and time.monotonic() < deadline:
        time.sleep(0.1)  # the receiver cleans up once it sees the stream end
    assert os.listdir(dep.inbox) == []


@pytest.mark.parametrize(
    "command",
    [(), ("internal-sftp",), ("scp", "-t", "/tmp"), ("rsync", "--server", ".", "/tmp"),
     ("id;", "touch", "/tmp/pwned")],
)  # fmt: skip
def test_anything_but_the_client_is_refused(
    sshd_deployment: Deployment, command: tuple[str, ...]
) -> None:
    dep = sshd_deployment
    done = dep.ssh(dep.collector, *command)
    assert done.returncode != 0
    assert "use 'dittohead send'" in done.stderr
    assert os.listdir(dep.inbox) == []
    assert not Path("/tmp/pwned").exists()


def test_sftp_and_scp_clients_are_refused(sshd_deployment: Deployment, tmp_path: Path) -> None:
    dep = sshd_deployment
    opts = ["-P", str(dep.port), "-i", str(dep.key(dep.collector)),
            "-o", f"UserKnownHostsFile={dep.known_hosts}", "-o", "BatchMode=yes"]  # fmt: skip
    payload = tmp_path / "x.txt"
    payload.write_text("x")
    sftp = run("sftp", *opts, "-b", "-", f"{dep.collector}@127.0.0.1", input="put x.txt\n",
               check=False, cwd=tmp_path, timeout=60)  # fmt: skip
    assert sftp.returncode != 0
    scp = run("scp", *opts, str(payload), f"{dep.collector}@127.0.0.1:x.txt", check=False,
              timeout=60)  # fmt: skip
    assert scp.returncode != 0
    assert os.listdir(dep.inbox) == []


def pwd_uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


THROUGH_SSHD = (
    "dotdot-canary",
    "abs-canary",
    "symlink",
    "hardlink",
    "gnu-longname-escape",
    "pax-global-escape",
    "case-collision",
    "truncated-in-data",
    "manifest-wrong-sha",
    "garbage-after-end",
    "not-a-tar",
)


@pytest.mark.parametrize("name", THROUGH_SSHD)
def test_hostile_streams_through_real_sshd(sshd_deployment: Deployment, name: str) -> None:
    """A handful of the checked-in hostile streams, sent as the collector through OpenSSH."""
    dep = sshd_deployment
    canary = dep.base / "canary"
    canary.mkdir(exist_ok=True, mode=0o777)
    hostile = {h.name: h for h in streams.streams(str(canary))}[name]
    command = f"dittohead upload v1 {dep.study} brogden-a"
    done = subprocess.run(
        ["ssh", "-F", "none", "-p", str(dep.port), "-i", str(dep.key(dep.collector)),
         "-o", f"UserKnownHostsFile={dep.known_hosts}", "-o", "BatchMode=yes",
         f"{dep.collector}@127.0.0.1", command],
        input=hostile.stream, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode != 0
    assert hostile.expect in one_error_line(err)
    assert os.listdir(dep.inbox) == []
    assert os.listdir(canary) == []


def test_a_tty_is_refused(sshd_deployment: Deployment) -> None:
    dep = sshd_deployment
    done = run(
        "ssh", "-tt", "-F", "none", "-p", str(dep.port), "-i", dep.key(dep.collector),
        "-o", f"UserKnownHostsFile={dep.known_hosts}", "-o", "BatchMode=yes",
        f"{dep.collector}@127.0.0.1", check=False, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode != 0
    # PermitTTY no: sshd refuses the terminal and `ssh -tt` gives up on that (the bare shell
    # without a TTY is refused by the receiver: see test_anything_but_the_client_is_refused).
    assert "PTY allocation request failed" in done.stderr
    assert os.listdir(dep.inbox) == []


def test_an_authorized_key_line_forces_the_receiver(sshd_deployment: Deployment) -> None:
    """A user outside the Match Group, whose only key is the line `authorized-key` prints:
    sshd's `restrict,command=` alone must lock them into the receiver."""
    dep = sshd_deployment
    user = dep.accounts.user("keyonly", dep.base / "home")
    keys = dep.base / "keys"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / user)
    line = dep.admin("authorized-key", str(keys / f"{user}.pub"))
    assert line.returncode == 0, line.stderr
    assert line.stdout.startswith('restrict,command="') and line.stdout.count("\n") == 1
    (keys / f"{user}.authorized").write_text(line.stdout)

    shell = dep.ssh(user, "id")
    assert shell.returncode != 0
    assert "use 'dittohead send'" in one_error_line(shell.stderr)
    tty = run(
        "ssh", "-tt", "-F", "none", "-p", str(dep.port), "-i", dep.key(user),
        "-o", f"UserKnownHostsFile={dep.known_hosts}", "-o", "BatchMode=yes",
        f"{user}@127.0.0.1", check=False, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert "PTY allocation request failed" in tty.stderr  # `restrict` implies no-pty
    forward = run(
        "ssh", "-F", "none", "-p", str(dep.port), "-i", dep.key(user), "-N",
        "-o", f"UserKnownHostsFile={dep.known_hosts}", "-o", "BatchMode=yes",
        "-o", "ExitOnForwardFailure=yes", "-L", "127.0.0.1:0:127.0.0.1:22",
        f"{user}@127.0.0.1", check=False, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert forward.returncode != 0  # `restrict` implies no-port-forwarding
    refused = dep.send(user, study_folder(dep, "s05"))
    assert f"not an uploader for study '{dep.study}'" in one_error_line(refused.stderr)
    assert os.listdir(dep.inbox) == []


@pytest.mark.parametrize("ssh", [None, "builtin"], ids=["openssh", "asyncssh"])
def test_a_compressed_send_is_stored_byte_for_byte(
    sshd_deployment: Deployment, ssh: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On loopback the client leaves compression off; DITTOHEAD_COMPRESS=1 asks for it, as a
    # PC across a campus link would.
    monkeypatch.setenv("DITTOHEAD_COMPRESS", "1")
    dep = sshd_deployment
    name = f"z-{ssh or 'openssh'}"
    folder = dep.base / "pc" / name
    (folder / "eprime").mkdir(parents=True)
    log = "".join(
        f"Trial {i}\tStimulus: face{i % 7}.bmp\tRT: {300 + i % 250}\r\n" for i in range(9000)
    )
    (folder / "eprime" / f"{name}.txt").write_bytes(log.encode("utf-16"))  # E-Prime's logs
    (folder / "eprime" / f"{name}.bin").write_bytes(os.urandom(400_000))  # goes raw
    sent = dep.send(dep.collector, folder, "-v", ssh=ssh)
    assert sent.returncode == 0, sent.stderr
    assert "compression saved" in sent.stderr, sent.stderr
    assert dep.process().returncode == 0
    files = tree_files(dep.destination)
    for path in (folder / "eprime").iterdir():
        assert files[f"eprime/{path.name}"] == path.read_bytes()
    verify = dep.admin("verify", "--study", dep.study)
    assert verify.returncode == 0, verify.stdout + verify.stderr
