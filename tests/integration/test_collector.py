"""The collector's side on the real sshd tier: a preset send (with its things), ``presets``,
``status`` showing one's own uploads and nothing of another collector's, the status verb's
hostile requests, and a send SIGKILLed after its first confirmed batch and run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.harness import Deployment, run

pytestmark = [pytest.mark.sshd, pytest.mark.root]


def client(dep: Deployment, *args: str | Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DITTOHEAD_SSH", "DITTOHEAD_BATCH")}
    env["DITTOHEAD_CONFIG"] = str(config)
    return run(dep.python, "-I", "-m", "dittohead.client.cli", *args, check=False, env=env)


def write_config(dep: Deployment, folder: Path, user: str) -> Path:
    path = dep.base / f"client-{user}.toml"
    path.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {dep.port}\nknown_hosts = "{dep.known_hosts}"\n'
        f'station = "brogden-a"\n\n[[preset]]\nname = "{dep.study}"\nstudy = "{dep.study}"\n'
        f'folder = "{folder}"\nthings = ["eprime"]\nuser = "{user}"\n'
        f'identity = "{dep.key(user)}"\n'
    )
    return path


def test_preset_send_presets_and_status(sshd_deployment: Deployment) -> None:
    dep = sshd_deployment
    folder = dep.base / "pc-preset"
    (folder / "eprime").mkdir(parents=True)
    (folder / "biopac").mkdir()
    (folder / "eprime" / "p01.txt").write_text("preset one\n")
    (folder / "biopac" / "p01.acq").write_bytes(b"not this time")
    config = write_config(dep, folder, dep.collector)

    listed = client(dep, "presets", "--json", config=config)
    assert listed.returncode == 0, listed.stderr
    assert [p["name"] for p in json.loads(listed.stdout)["presets"]] == [dep.study]

    state = dep.base / "state-preset.json"
    sent = client(dep, "send", "--preset", dep.study, "--state", state, "--json", config=config)
    assert sent.returncode == 0, sent.stderr
    doc = json.loads(sent.stdout)
    assert (doc["files"], doc["study"], doc["source"]) == (1, dep.study, "brogden-a")
    [upload] = doc["uploads"]

    # Before the processor: nothing known to the server yet (the entry waits in the inbox).
    before = client(dep, "status", "--preset", dep.study, "--json", config=config)
    assert before.returncode == 0, before.stderr
    assert upload not in [u["upload"] for u in json.loads(before.stdout)["uploads"]]

    done = dep.process()
    assert done.returncode == 0, done.stderr
    status = client(dep, "status", "--preset", dep.study, "--json", config=config)
    assert status.returncode == 0, status.stderr
    answer = json.loads(status.stdout)
    assert answer["user"] == dep.collector
    mine = {u["upload"]: u for u in answer["uploads"]}
    assert mine[upload]["state"] == "finalized"
    assert mine[upload]["files"] == [
        {"path": "eprime/p01.txt", "outcome": "stored", "stored_as": "eprime/p01.txt"}
    ]
    human = client(dep, "status", "--preset", dep.study, config=config)
    assert "eprime/p01.txt: stored as eprime/p01.txt" in human.stdout

    # Another collector sees nothing of it, and cannot reach the folder on disk either.
    other = dep.ssh(dep.outsider, "dittohead", "status", "v1", dep.study)
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout)["uploads"] == []
    peek = run("setpriv", f"--reuid={dep.outsider}", f"--regid={dep.outsider}", "--clear-groups",
               "ls", dep.base / "dropbox" / dep.study / "outcomes", check=False)  # fmt: skip
    assert peek.returncode != 0


@pytest.mark.parametrize(
    "command",
    [
        "dittohead status v1",
        "dittohead status v1 nccam3 alice",
        "dittohead status v1 ../nccam3",
        "dittohead status v2 nccam3",
        "dittohead status v1 nosuchstudy",
        "dittohead status v1 nccam3;id",
    ],
)
def test_hostile_status_requests_get_one_line(sshd_deployment: Deployment, command: str) -> None:
    dep = sshd_deployment
    done = dep.ssh(dep.collector, command)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dittohead: "), done.stderr
    assert done.stdout == ""


def test_a_send_killed_after_its_first_batch_sends_only_the_rest(
    sshd_deployment: Deployment,
) -> None:
    dep = sshd_deployment
    folder = dep.base / "pc-batches"
    (folder / "run").mkdir(parents=True)
    for i in range(12):
        (folder / "run" / f"b{i:02d}.bin").write_bytes(os.urandom(200_000) + bytes([i]))
    state = dep.base / "state-batches.json"
    argv = [
        str(dep.python), "-I", "-m", "dittohead.client.cli", "send",
        "--host", "127.0.0.1", "--port", str(dep.port), "--user", dep.collector,
        "--identity", str(dep.key(dep.collector)), "--known-hosts", str(dep.known_hosts),
        "--state", str(state), "--study", dep.study, "--source", "brogden-a", "--json",
        "--batch-files", "2", str(folder),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            confirmed = json.loads(state.read_text())["files"]
        except (OSError, ValueError):
            confirmed = {}
        if confirmed:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = set(json.loads(state.read_text())["files"])
    assert 2 <= len(first) < 12  # at least the first batch, not everything

    again = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["files"] == 12 - len(first) and len(doc["uploads"]) == (doc["files"] + 1) // 2
    done = dep.process()
    assert done.returncode == 0, done.stderr
    history = dep.admin("history", "--study", dep.study, "--json")
    records = [json.loads(line) for line in history.stdout.splitlines()]
    ours = [r for r in records if r["path"].startswith("run/")]
    stored = [r["path"] for r in ours if r["outcome"] == "stored"]
    assert sorted(stored) == [f"run/b{i:02d}.bin" for i in range(12)]  # each stored once
    assert sorted(os.listdir(dep.destination / "run")) == sorted(p.split("/")[1] for p in stored)
