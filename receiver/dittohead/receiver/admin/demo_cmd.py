"""``dittohead-admin demo``: the whole flow on an embedded default, for a newcomer.

A temporary dropbox and study tree set up by ``init``; an in-process SSH server standing in for
sshd + ForceCommand; a real ``dittohead send`` (its own process, as a collector would run it) of
a small sample study; the processor; a re-send with one file changed and one added; and a short
report of what landed under which names. Nothing outside the temporary folder is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import grp
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from dittohead.receiver.admin.history_cmd import LEGEND, history_lines, latest
from dittohead.receiver.admin.init_cmd import init
from dittohead.receiver.config.checked import check_config
from dittohead.receiver.config.model import Config

if TYPE_CHECKING:
    from dittohead.receiver.admin.localserver import LocalServer
from dittohead.receiver.processor.finalize import run_once
from dittohead.receiver.processor.ledger import read_ledger

STUDY = "nccam3"
SOURCE = "brogden-a"
_CLIENT = "import sys; from dittohead.client.cli import main; sys.exit(main())"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the whole flow on a temporary server and show it")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder afterwards")
    p.set_defaults(handler=None)


class _ServerThread:
    """The asyncssh server on its own event loop, so the client can run as a plain process."""

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> int:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _sample_study(folder: Path) -> None:
    (folder / "eprime").mkdir(parents=True)
    (folder / "biopac").mkdir()
    (folder / "eyetracker").mkdir()
    (folder / "eprime" / "s01_session1.txt").write_text("Subject: 1\nSession: 1\nRT: 512\n")
    (folder / "eprime" / "s01_session1.edat2").write_bytes(os.urandom(48 * 1024))
    (folder / "biopac" / "s01.acq").write_bytes(os.urandom(256 * 1024))
    (folder / "eyetracker" / "s01.edf").write_bytes(os.urandom(128 * 1024))


def _write_config(base: Path) -> Config:
    group = grp.getgrgid(os.getgid()).gr_name
    (base / "study" / STUDY).mkdir(parents=True)
    doc = {
        "dropbox": str(base / "dropbox"),
        "socket": str(base / "run" / "processor.sock"),
        "state_dir": str(base / "state"),
        # The demo's "service account" is whoever runs it: nothing here needs another user.
        "user": pwd.getpwuid(os.getuid()).pw_name,
        "sources": {SOURCE: "Brogden A"},
        "studies": {
            STUDY: {
                "destination": str(base / "study" / STUDY / "raw-dittohead"),
                "uploaders": [group],
            }
        },
    }
    path = base / "dittohead.yaml"
    import yaml

    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return check_config(path)  # as `dittohead-admin init` would: writes the checked copy


def _send(base: Path, port: int, folder: Path, step: str) -> None:
    argv = [
        "send",
        "--host", "127.0.0.1", "--port", str(port), "--user", "collector",
        "--identity", str(base / "keys" / "collector"),
        "--known-hosts", str(base / "keys" / "known_hosts"),
        "--state", str(base / "collector-pc" / "state.json"),
        "--study", STUDY, "--source", SOURCE, str(folder),
    ]  # fmt: skip
    print(f"\n== {step}\n$ dittohead {shlex.join(argv)}")
    sys.stdout.flush()
    done = subprocess.run(
        [sys.executable, "-I", "-c", _CLIENT, *argv],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    print(_indent(done.stdout + done.stderr))
    if done.returncode != 0:
        raise SystemExit(f"dittohead: the demo send failed (exit {done.returncode})")


def _indent(text: str) -> str:
    return "\n".join(f"   {line}" for line in text.strip().splitlines())


def _process(config: Config) -> None:
    summary = run_once(config)
    print(
        f"\n$ dittohead-processor --once\n   finalized {summary.entries} upload(s): "
        f"{summary.stored} file(s) stored, {summary.duplicates} duplicate(s)"
    )


def _report(config: Config) -> None:
    dest = config.study(STUDY).destination
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        records = read_ledger(fd)
    finally:
        os.close(fd)
    print(f"\n== What the study runner finds in {dest}")
    for path in sorted(p for p in dest.rglob("*") if ".dittohead" not in p.parts):
        if path.is_file():
            rel = path.relative_to(dest).as_posix()
            mode = oct(path.stat().st_mode & 0o7777)[2:]
            print(f"   {rel:<34} {path.stat().st_size:>8} bytes  mode {mode}")
    print("\n== $ dittohead-admin latest --study nccam3   (newest version of each path)")
    for sent, doc in latest(records).items():
        note = "" if doc["stored_as"] == sent else "   (a newer version; the first is kept)"
        print(f"   {sent:<34} → {doc['stored_as']}{note}")
    print("\n== $ dittohead-admin history --study nccam3   (the hash-chained ledger)")
    # The very lines the real command prints.
    for line in (LEGEND, *history_lines(records, config.source_name)):
        print(f"   {line}")


def demo(base: Path) -> None:
    import asyncssh

    from dittohead.receiver.admin.localserver import LocalServer

    print(f"dittohead demo: a throwaway server and collector PC under {base}")
    config = _write_config(base)
    print("\n$ dittohead-admin init")
    print(_indent("\n".join(init(config))))
    keys = base / "keys"
    keys.mkdir()
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key.write_private_key(keys / "collector")
    os.chmod(keys / "collector", 0o600)
    folder = base / "collector-pc" / "study-nccam3"
    _sample_study(folder)
    server = LocalServer(base / "dittohead.yaml", host_key, [client_key.convert_to_public()])
    with _ServerThread(server) as port:
        pin = host_key.export_public_key("openssh").decode().strip()
        (keys / "known_hosts").write_text(f"[127.0.0.1]:{port} {pin}\n")
        _send(base, port, folder, "A collector sends a study folder (E-Prime, Biopac, eyetracker)")
        _process(config)
        with (folder / "eprime" / "s01_session1.txt").open("a") as fh:
            fh.write("RT: 498  (a corrected response time)\n")
        (folder / "eyetracker" / "s02.edf").write_bytes(os.urandom(64 * 1024))
        _send(base, port, folder, "They fix one file and record one more, then send again")
        _process(config)
    _report(config)
    print(
        "\nNothing was overwritten: the first version keeps its name, the new one is ~2,"
        "\nand every file is in the ledger with who sent it, from where, and its sha256."
    )


def run(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="dittohead-demo-"))
    try:
        demo(base)
    finally:
        if args.keep:
            print(f"\n(kept {base})")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0
