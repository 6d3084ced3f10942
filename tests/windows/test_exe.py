"""dittohead.exe under Wine against the real sshd tier: a send of a ``C:\\Studies\\…`` folder lands
in the study tree and its ledger; a send cut off after its first batch, run again, sends only
the rest. Wine has no ``ssh.exe``, so these go through asyncssh: the client's own fallback on
Windows PCs without OpenSSH."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.integration.harness import Deployment
from tests.support.invariants import tree_files
from tests.windows.conftest import Windows

pytestmark = [pytest.mark.windows, pytest.mark.sshd, pytest.mark.root, pytest.mark.slow]


def study_folder(win: Windows, name: str, files: dict[str, bytes]) -> Path:
    """``C:\\Studies\\<name>`` in the prefix, holding `files` (and no state yet: the prefix
    is kept between runs)."""
    folder = win.drive_c / "Studies" / name
    shutil.rmtree(folder, ignore_errors=True)
    (win.drive_c / "state" / f"{name}.json").unlink(missing_ok=True)
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (win.drive_c / "state").mkdir(exist_ok=True)
    return folder


def send_argv(win: Windows, dep: Deployment, name: str, *extra: str) -> list[str]:
    return [
        str(win.exe), "send", "--host", "127.0.0.1", "--port", str(dep.port),
        "--user", dep.collector, "--identity", win.path(dep.key(dep.collector)),
        "--known-hosts", win.path(dep.known_hosts), "--state", f"C:\\state\\{name}.json",
        "--study", dep.study, "--source", "brogden-a", "--json", *extra,
        f"C:\\Studies\\{name}",
    ]  # fmt: skip


def ledger(dep: Deployment) -> list[dict[str, object]]:
    done = dep.admin("history", "--study", dep.study, "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_send_of_a_drive_path_lands_and_is_in_the_ledger(
    windows: Windows, sshd_deployment: Deployment
) -> None:
    dep = sshd_deployment
    files = {"eprime/s21.txt": b"subject s21\r\n", "biopac/s21.acq": os.urandom(300_000)}
    study_folder(windows, "s21", files)
    sent = windows.run(*send_argv(windows, dep, "s21", "-v"))
    assert sent.returncode == 0, sent.stderr
    assert "sent through OpenSSH" not in sent.stderr  # no ssh.exe under Wine: asyncssh
    assert "(cipher aes128-gcm@openssh.com)" in sent.stderr, sent.stderr
    receipt = json.loads(sent.stdout)
    assert (receipt["files"], receipt["study"], receipt["user"]) == (2, dep.study, dep.collector)
    done = dep.process()
    assert done.returncode == 0, done.stderr
    stored = tree_files(dep.destination)
    for rel, data in files.items():  # the Windows separators became the tree's own
        assert stored[rel] == data
    records = {r["path"]: r for r in ledger(dep) if r["upload"] == receipt["upload"]}
    assert set(records) == set(files)
    assert all(r["outcome"] == "stored" for r in records.values())
    # The state the command kept under its C:\ path knows both files: nothing new, nothing sent.
    again = windows.run(*send_argv(windows, dep, "s21"))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["files"] == 0


def test_a_send_cut_off_sends_only_the_rest_when_run_again(
    windows: Windows, sshd_deployment: Deployment
) -> None:
    dep = sshd_deployment
    files = {f"run{i}/s22-{i}.bin": os.urandom(4 << 20) for i in range(8)}
    study_folder(windows, "s22", files)
    state = windows.drive_c / "state" / "s22.json"
    # One file a batch, each confirmed by its own receipt; the send is killed (as a closed
    # laptop would stop it) once the state holds the first.
    first = windows.popen(*send_argv(windows, dep, "s22", "--batch-files", "1"))
    deadline = time.monotonic() + 120
    confirmed: set[str] = set()
    while time.monotonic() < deadline and not confirmed and first.poll() is None:
        if state.is_file():
            confirmed = set(json.loads(state.read_bytes())["files"])
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    out, err = first.communicate(timeout=60)
    assert confirmed, f"no batch was confirmed before the send ended: {out} {err}"
    confirmed = set(json.loads(state.read_bytes())["files"])
    assert 1 <= len(confirmed) < len(files), "the send finished before it could be cut off"

    again = windows.run(*send_argv(windows, dep, "s22", "--batch-files", "1"))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["files"] == len(files) - len(confirmed)
    assert set(json.loads(state.read_bytes())["files"]) == set(files)

    done = dep.process()
    assert done.returncode == 0, done.stderr
    stored = tree_files(dep.destination)
    for rel, data in files.items():
        assert stored[rel] == data
    # each file stored once: the second send did not repeat what the first had confirmed
    # (the deployment is the whole session's: other tiers' files are in its ledger too)
    paths = [str(r["path"]) for r in ledger(dep) if str(r["path"]) in files]
    assert sorted(paths) == sorted(files)


def test_a_missing_folder_is_one_line(windows: Windows, sshd_deployment: Deployment) -> None:
    done = windows.run(*send_argv(windows, sshd_deployment, "s29-missing"))
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dittohead: "), done.stderr
    assert "s29-missing" in lines[0]
