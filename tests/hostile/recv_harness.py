"""Run ``dittohead-receive`` the way sshd does: a throwaway server layout, a config, a subprocess
with ``SSH_ORIGINAL_COMMAND`` set and the upload on standard input."""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.hostile import streams

#: the console script sshd's ForceCommand runs (it sits beside the test interpreter)
RECEIVE = Path(sys.executable).with_name("dittohead-receive")
NOBODY_GROUP = "dittohead-test-nobody-group"


def primary_group() -> str:
    return grp.getgrgid(os.getgid()).gr_name


@dataclass(frozen=True)
class Server:
    root: Path
    dropbox: Path
    config: Path
    socket: Path

    def inbox(self, study: str = streams.STUDY) -> Path:
        return self.dropbox / study / "inbox"

    def entries(self, study: str = streams.STUDY) -> list[str]:
        return sorted(os.listdir(self.inbox(study)))


def make_server(
    root: Path,
    *,
    limits: dict[str, Any] | None = None,
    uploaders: list[str] | None = None,
    dropbox: Path | None = None,
    socket: Path | None = None,
) -> Server:
    """A dropbox with studies ``alpha`` (uploaders: the current primary group unless told
    otherwise) and ``closed`` (a group nobody is in), inboxes 3773 as `dittohead-admin init`
    makes them."""
    dropbox = dropbox or root / "dropbox"
    socket = socket or root / "processor.sock"
    for study in (streams.STUDY, streams.CLOSED_STUDY):
        inbox = dropbox / study / "inbox"
        inbox.mkdir(parents=True)
        os.chmod(inbox, 0o3773)
    doc = {
        "dropbox": str(dropbox),
        "socket": str(socket),
        "state_dir": str(root / "state"),
        "studies": {
            streams.STUDY: {
                "destination": str(root / "dest-alpha"),
                "uploaders": uploaders or [primary_group()],
            },
            streams.CLOSED_STUDY: {
                "destination": str(root / "dest-closed"),
                "uploaders": [NOBODY_GROUP],
            },
        },
        "limits": limits if limits is not None else dict(streams.LIMITS),
    }
    config = root / "dittohead.yaml"
    config.write_text(json.dumps(doc, indent=2), encoding="utf-8")  # JSON is YAML
    os.chmod(config, 0o644)
    return Server(root, dropbox, config, socket)


def receiver_env(command: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C"}
    if command is not None:
        env["SSH_ORIGINAL_COMMAND"] = command
    env.update(extra or {})
    return env


def run(
    server: Server,
    stdin: bytes,
    command: str | None = streams.COMMAND,
    *,
    env: dict[str, str] | None = None,
    argv: list[str] | None = None,
    prefix: list[str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    args = argv if argv is not None else ["--config", str(server.config)]
    return subprocess.run(
        [*(prefix or []), str(RECEIVE), *args],
        input=stdin,
        capture_output=True,
        env=receiver_env(command, env),
        timeout=timeout,
        check=False,
    )


def assert_refused(result: subprocess.CompletedProcess[bytes], fragment: str) -> str:
    """Non-zero exit, exactly one ``dittohead:`` line containing `fragment`, no traceback."""
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode != 0, err
    assert not result.stdout
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dittohead: "), err
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its mode and size (to prove nothing was added or changed)."""
    found: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
            found[str(path.relative_to(root))] = (st.st_mode, size)
    return found
