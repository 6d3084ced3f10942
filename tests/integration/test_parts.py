"""A send in parts on the real sshd tier, with each SSH client the client can use (OpenSSH's
``ssh``, and the built-in asyncssh one with ``DITTOHEAD_SSH=builtin``): part n+1 streams while
part n's receiver commits (client/dittohead/client/plan/batches.py).

* every part lands and the processor stores every file once;
* a send SIGKILLed while part 2 streams and part 1 commits, run again, sends only what no
  receipt confirmed, and every file is stored once;
* a part the server refuses mid-send stops the send with one line, the parts confirmed before
  stay confirmed, and once the admin has fixed the cause a re-run completes.

Small parts come from ``--batch-files`` (the same limit as ``DITTOHEAD_BATCH``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.harness import Deployment, write_dep_config

pytestmark = [pytest.mark.sshd, pytest.mark.root]

TRANSPORTS = [pytest.param(None, id="openssh"), pytest.param("builtin", id="builtin")]


def send_argv(dep: Deployment, folder: Path, state: Path, *extra: str) -> list[str]:
    return [
        str(dep.python), "-I", "-m", "dittohead.client.cli", "send",
        "--host", "127.0.0.1", "--port", str(dep.port), "--user", dep.collector,
        "--identity", str(dep.key(dep.collector)), "--known-hosts", str(dep.known_hosts),
        "--state", str(state), "--study", dep.study, "--source", "brogden-a", "--json",
        *extra, str(folder),
    ]  # fmt: skip


def client_env(ssh: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DITTOHEAD_SSH", "DITTOHEAD_BATCH")}
    if ssh is not None:
        env["DITTOHEAD_SSH"] = ssh
    return env


def make_folder(root: Path, sizes: list[int]) -> list[str]:
    """Files ``run/f00.bin``… of `sizes` bytes (distinct content); their paths."""
    (root / "run").mkdir(parents=True)
    paths = []
    for i, size in enumerate(sizes):
        (root / "run" / f"f{i:02d}.bin").write_bytes(os.urandom(size) + bytes([i]))
        paths.append(f"run/f{i:02d}.bin")
    return paths


def stored_once(dep: Deployment, folder: str, paths: list[str]) -> None:
    """Process what is in the inbox; then every one of `paths` is stored exactly once (a part
    sent again is a duplicate, never a second version)."""
    done = dep.process()
    assert done.returncode == 0, done.stderr
    history = dep.admin("history", "--study", dep.study, "--json")
    records = [json.loads(line) for line in history.stdout.splitlines()]
    ours = [r for r in records if r["path"].startswith(f"{folder}/")]
    stored = sorted(r["path"] for r in ours if r["outcome"] == "stored")
    assert stored == sorted(paths)
    landed = os.listdir(dep.destination / folder / "run")
    assert sorted(f"{folder}/run/{n}" for n in landed) == stored  # no name~2 anywhere


def recorded(state: Path) -> set[str]:
    try:
        return set(json.loads(state.read_text())["files"])
    except (OSError, ValueError):
        return set()


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_every_part_lands_and_every_file_is_stored_once(
    sshd_deployment: Deployment, ssh: str | None
) -> None:
    dep = sshd_deployment
    name = f"parts-all-{ssh or 'openssh'}"
    folder = dep.base / f"pc-{name}"
    paths = make_folder(folder / name, [100_000] * 7)
    state = dep.base / f"state-{name}.json"
    done = subprocess.run(
        send_argv(dep, folder, state, "--batch-files", "2"),
        capture_output=True, text=True, check=False, env=client_env(ssh),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["files"] == 7 and len(doc["uploads"]) == 4  # 2 + 2 + 2 + 1
    assert [r["files"] for r in doc["receipts"]] == [2, 2, 2, 1]  # in part order
    assert recorded(state) == {f"{name}/{p}" for p in paths}
    stored_once(dep, name, [f"{name}/{p}" for p in paths])


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_a_send_killed_while_part_2_streams_and_part_1_commits_resends_only_the_rest(
    sshd_deployment: Deployment, ssh: str | None
) -> None:
    """Part 1 is small, part 2 large: the client is SIGKILLed once part 1's entry is committed
    in the inbox while part 2's receiver is staging (its ``.`` entry is there). Through OpenSSH
    that is the moment of part 1's commit (part 2's ssh was started ahead and streams at once);
    the built-in client connects for part 2 while part 1 commits, and streams a little later."""
    dep = sshd_deployment
    name = f"parts-kill-{ssh or 'openssh'}"
    folder = dep.base / f"pc-{name}"
    paths = make_folder(folder / name, [50_000, 50_000, 40 << 20, 40 << 20, 50_000])
    paths = [f"{name}/{p}" for p in paths]
    state = dep.base / f"state-{name}.json"
    before = set(os.listdir(dep.inbox))
    argv = send_argv(dep, folder, state, "--batch-files", "2")
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=client_env(ssh)
    )
    staging_seen = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        now = set(os.listdir(dep.inbox)) - before
        committed = any(not n.startswith(".") for n in now)  # part 1
        staging_seen = any(n.startswith(".") for n in now)  # part 2 streaming
        if committed and staging_seen:
            break
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    assert staging_seen, "part 2 was not streaming when part 1 committed"
    first = recorded(state)
    assert first <= set(paths[:2])  # part 1 at most: part 2 never completed

    again = subprocess.run(argv, capture_output=True, text=True, check=False, env=client_env(ssh))
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["files"] == 5 - len(first)  # only what no receipt confirmed
    assert recorded(state) == set(paths)
    stored_once(dep, name, paths)


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_a_part_refused_mid_send_stops_with_one_line_and_a_rerun_completes(
    sshd_deployment: Deployment, ssh: str | None
) -> None:
    """The server's limit on a file's size refuses part 2 (its large file) while part 1 is
    being committed; once the admin raises the limit, the same send completes."""
    dep = sshd_deployment
    name = f"parts-refused-{ssh or 'openssh'}"
    folder = dep.base / f"pc-{name}"
    # Part 2's stream is far larger than what the pipes and the connection can hold, so the
    # refusal (at the large file's header) always comes before its end: part 3 never starts.
    paths = make_folder(folder / name, [10_000, 10_000, 40 << 20, 10_000, 10_000])
    paths = [f"{name}/{p}" for p in paths]
    state = dep.base / f"state-{name}.json"
    argv = send_argv(dep, folder, state, "--batch-files", "2")
    # `check` writes the checked copy the receiver reads (its exit status speaks of the test
    # deployment's sshd and systemd, not of the YAML).
    write_dep_config(dep, limits={"max_file_bytes": 1 << 20})
    try:
        dep.admin("check")
        done = subprocess.run(argv, capture_output=True, text=True, check=False,
                              env=client_env(ssh))  # fmt: skip
    finally:
        write_dep_config(dep)
        dep.admin("check")
    assert done.returncode not in (0, 1), done.stderr  # the receiver's sysexits code
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dittohead: "), done.stderr
    assert "1 of 3 parts (2 files) were stored and confirmed" in lines[0]
    assert done.stdout == ""
    assert recorded(state) == set(paths[:2])

    again = subprocess.run(argv, capture_output=True, text=True, check=False, env=client_env(ssh))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["files"] == 3
    assert recorded(state) == set(paths)
    stored_once(dep, name, paths)
