"""``make bench-startup``: how long each short-lived entry point takes to get to work.

Not a pytest test. Two figures, each the median of many runs, alternating between the trees
given (so that a machine busy for a moment weighs on each alike):

* receiver: from spawning ``python -I -X utf8 -m <receive module> --config CFG`` (what sshd's
  ForceCommand runs, with ``SSH_ORIGINAL_COMMAND`` set and a current checked copy beside the
  YAML) until it waits for the first byte of the upload on standard input. The moment is read
  from ``/proc/<pid>/syscall``: the receiver blocks in a read or poll of fd 0 there, and in no
  other way before it.
* client: from spawning ``python -I -m dittohead.client.cli send …`` until ``ssh`` starts (a
  stand-in ``ssh`` that writes the time and fails, so the client then gives up).

Usage: ``python tests/bench/startup.py [--runs N] [TREE ...]`` where each TREE is a checkout
with its own ``.venv`` (default: this one). Run as root (the receiver checks that its user is
an uploader: root's primary group is made the study's uploader group).
"""

from __future__ import annotations

import argparse
import grp
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

#: the receiver's module in this tree and in trees from before it moved to ``upload/``
RECEIVE_MODULES = ("dittohead.receiver.upload.receive", "dittohead.receiver.receive")
#: syscalls the receiver may block in on fd 0: read, poll, select, pselect6, ppoll (x86_64)
WAITING = {0, 7, 23, 270, 271}


def receive_module(python: Path) -> str:
    for module in RECEIVE_MODULES:
        found = subprocess.run(
            [python, "-I", "-c", f"import importlib.util as u; print(u.find_spec({module!r}))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if found.stdout.strip() not in ("", "None"):
            return module
    raise SystemExit(f"{python}: no receiver module found")


def server(base: Path, python: Path) -> Path:
    """A dropbox, a study and a YAML with its checked copy, made by the tree's own admin tool."""
    group = grp.getgrgid(os.getgid()).gr_name
    (base / "raw").mkdir(parents=True)
    config = base / "dittohead.yaml"
    doc = {
        "dropbox": str(base / "dropbox"),
        "socket": str(base / "processor.sock"),
        "state_dir": str(base / "state"),
        "user": "root",
        "studies": {"nccam3": {"destination": str(base / "raw"), "uploaders": [group]}},
        "limits": {"min_free_bytes": 0},
    }
    config.write_text(yaml.safe_dump(doc))
    subprocess.run(
        [python.parent / "dittohead-admin", "init", "--config", config],
        check=True,
        capture_output=True,
    )
    return config


def receiver_once(python: Path, module: str, config: Path) -> float:
    env = {"SSH_ORIGINAL_COMMAND": "dittohead upload v1 nccam3 brogden-a", "LANG": "C.UTF-8"}
    read_fd, write_fd = os.pipe()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [python, "-I", "-X", "utf8", "-m", module, "--config", config],
        stdin=read_fd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    os.close(read_fd)
    syscall = Path(f"/proc/{proc.pid}/syscall")
    try:
        while True:
            fields = syscall.read_text().split()
            if fields and fields[0].isdigit() and int(fields[0]) in WAITING:
                if int(fields[0]) == 0 and int(fields[1], 16) != 0:
                    continue  # a read, but not of standard input
                return time.perf_counter() - start
            if proc.poll() is not None:
                raise SystemExit(f"the receiver ended ({proc.returncode}) before it read")
            time.sleep(0.0003)
    finally:
        os.close(write_fd)  # an empty upload: it ends at once
        proc.wait()


def client_once(python: Path, base: Path) -> float:
    stamp = base / "ssh-started"
    fake = base / "ssh"
    fake.write_text(f"#!/bin/sh\ndate +%s.%N > {stamp}\nexit 255\n")
    fake.chmod(0o755)
    folder = base / "data"
    (folder / "eprime").mkdir(parents=True, exist_ok=True)
    (folder / "eprime" / "s01.txt").write_text("subject 1\n")
    known = base / "known_hosts"
    known.write_text("[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJx0\n")
    stamp.unlink(missing_ok=True)
    argv: list[str | Path] = [python, "-I", "-m", "dittohead.client.cli", "send"]
    argv += ["--host", "127.0.0.1"]
    argv += ["--port", "2222", "--user", "nobody", "--identity", str(fake)]
    argv += ["--known-hosts", str(known), "--state", str(base / "state.json")]
    argv += ["--study", "nccam3", "--source", "brogden-a", str(folder)]
    env = {"DITTOHEAD_SSH": str(fake), "HOME": str(base), "PATH": "/usr/bin:/bin"}
    start = time.time()
    subprocess.run(argv, env=env, capture_output=True, check=False, timeout=60)
    if not stamp.exists():
        raise SystemExit(f"{python}: the client did not start ssh")
    return float(stamp.read_text()) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("trees", nargs="*", type=Path, default=[REPO])
    args = parser.parse_args()
    pythons = [tree.resolve() / ".venv" / "bin" / "python" for tree in args.trees]
    with tempfile.TemporaryDirectory(prefix="dittohead-startup-") as tmp:
        bases = [Path(tmp) / str(i) for i in range(len(pythons))]
        configs = [server(base, python) for base, python in zip(bases, pythons, strict=True)]
        modules = [receive_module(python) for python in pythons]
        receiver: list[list[float]] = [[] for _ in pythons]
        client: list[list[float]] = [[] for _ in pythons]
        for _ in range(args.runs):
            for i, python in enumerate(pythons):
                receiver[i].append(receiver_once(python, modules[i], configs[i]))
                client[i].append(client_once(python, bases[i]))
    print("| tree | receiver: spawn → waiting for the upload | client: spawn → ssh started |")
    print("|---|---:|---:|")
    for i, tree in enumerate(args.trees):
        r, c = statistics.median(receiver[i]), statistics.median(client[i])
        print(f"| {tree} | {r * 1000:.1f} ms | {c * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
