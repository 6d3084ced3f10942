"""Several hosts' processors on one dropbox, as the multi-host tests and tests/bench/hosts.py
run them: each "host" a real ``dittohead-processor --once`` process with a config of its own
(``state_dir``, socket, ``cluster.host``) on one dropbox and study tree.

Mocked: the uploaders' accounts. Entries belong to uids 7001-7003 with no Unix account, and the
runner lets those uids upload (creating Unix users is the root tiers' job).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.support.server import Server, write_config

REPO = Path(__file__).resolve().parents[2]
UPLOADERS = (7001, 7002, 7003)
RUNNER = (
    "import sys\n"
    "from dittohead.receiver.processor import finalize\n"
    f"finalize.may_upload = lambda uid, groups: uid in {UPLOADERS!r}  # mocked accounts\n"
    "from dittohead.receiver.processor.service import main\n"
    "sys.exit(main(['--config', sys.argv[1], '--once']))\n"
)


def host_config(server: Server, host: str, lease: str) -> Path:
    """A config of its own for `host`: same dropbox and tree, own state_dir and socket."""
    doc: dict[str, Any] = yaml.safe_load(server.config_path.read_text())
    doc["state_dir"] = str(server.base / f"state-{host}")
    doc["socket"] = str(server.base / f"run-{host}" / "processor.sock")
    doc["cluster"] = {"host": host, "lease": lease}
    doc["sources"]["brogden-b"] = "Brogden B"
    path = server.base / f"{host}.yaml"
    write_config(path, doc)
    return path


def start(config: Path, crash: str | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "DITTOHEAD_TEST_CRASH_AT"}
    if crash:
        env["DITTOHEAD_TEST_CRASH_AT"] = crash
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes]) -> str:
    _, err = proc.communicate(timeout=60)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"exit {proc.returncode}: {err.decode()}")
    return err.decode()


def commit_as(server: Server, uid: int, files: dict[str, bytes], source: str) -> str:
    name = server.commit(files, source=source)
    entry = server.inbox / name
    for path in [entry, *entry.rglob("*")]:
        os.chown(path, uid, -1, follow_symlinks=False)
    return name
