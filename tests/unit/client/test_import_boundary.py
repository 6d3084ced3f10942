"""The collector's command loads nothing from the server side and nothing Linux-only of its own,
and nothing it does not need before ``ssh`` starts: asyncssh only when OpenSSH cannot carry the
upload, the stream (tarfile) only once ``ssh`` is running.

Checked in a fresh ``python -I`` so that nothing imported by the test run itself can hide a
stray import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

# POSIX-only standard modules: the client must run on Windows, where they do not exist.
POSIX_ONLY = ("fcntl", "pwd", "grp", "termios", "resource", "posix")

PROBE = textwrap.dedent(
    f"""
    import json, sys, traceback

    POSIX_ONLY = {POSIX_ONLY!r}
    ours = []

    class Watch:
        # Records which file imported a POSIX-only module. The standard library and asyncssh
        # import some of them on POSIX behind a platform check; dittohead's own code must not.
        def find_spec(self, name, path=None, target=None):
            if name in POSIX_ONLY:
                frames = [f for f in traceback.extract_stack()[:-1] if "importlib" not in f.filename
                          and not f.filename.startswith("<")]
                importer = frames[-1].filename if frames else "?"
                if "/dittohead/" in importer.replace("\\\\", "/"):
                    ours.append((name, importer))
            return None

    sys.meta_path.insert(0, Watch())
    import dittohead.client.cli
    # One the standard library loaded first (posix, under os) is not seen by Watch when
    # dittohead imports it again: a dittohead module that holds one at its top level is.
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("dittohead."):
            for value in vars(module).values():
                if getattr(value, "__name__", None) in POSIX_ONLY and type(value) is type(sys):
                    ours.append((value.__name__, module.__file__))
    print(json.dumps({{"modules": sorted(sys.modules), "ours": ours}}))
    """
)


def _probe() -> dict[str, list[object]]:
    done = subprocess.run(
        [sys.executable, "-I", "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    result: dict[str, list[object]] = json.loads(done.stdout)
    return result


def test_cli_import_loads_no_receiver_and_no_server_dependencies() -> None:
    modules = _probe()["modules"]
    assert "dittohead.client.cli" in modules
    assert [m for m in modules if str(m).startswith("dittohead.receiver")] == []
    for server_only in ("sdnotify", "yaml", "pydantic", "aiosmtpd"):
        assert server_only not in modules, f"{server_only} is loaded by the client"


def test_client_code_imports_no_posix_only_module() -> None:
    assert _probe()["ours"] == []


# Runs the real command on a folder whose every file the state already confirms (and with
# --dry-run): nothing is to be sent, so asyncssh and the modules that send must not have been
# loaded.
NOTHING_NEW = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from pathlib import Path

    folder, state_path, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    from dittohead.client.cli import main
    from dittohead.client.plan.scan import scan
    from dittohead.client.plan.state import load_state

    if mode == "confirmed":
        state = load_state(state_path, host="drop.example.org", port=22, study="nccam3",
                           source="brogden-a")
        state.record(scan(folder).files)
    argv = ["send", "--host", "drop.example.org", "--state", str(state_path), "--study",
            "nccam3", "--source", "brogden-a", "--json", str(folder)]
    if mode == "dry-run":
        argv.insert(1, "--dry-run")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    print(json.dumps({"status": status, "out": json.loads(out.getvalue()),
                      "modules": sorted(sys.modules)}))
    """
)

ONLY_TO_SEND = (
    "asyncssh",
    "dittohead.client.transport.builtin",
    "dittohead.client.transport.login",
    "dittohead.client.transport.hostkeys",
    "dittohead.client.pack",
    "dittohead.client.deliver",
    "dittohead.client.reply",
    "dittohead.client.api",
)


def _nothing_new(tmp_path: Path, mode: str) -> dict[str, Any]:
    folder = tmp_path / "pc"
    (folder / "eprime").mkdir(parents=True)
    (folder / "eprime" / "s01.txt").write_bytes(b"subject 1\n")
    (folder / "s02.edat2").write_bytes(b"\x00" * 1000)
    done = subprocess.run(
        [sys.executable, "-I", "-c", NOTHING_NEW, str(folder), str(tmp_path / "st.json"), mode],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_cli_import_does_not_load_asyncssh() -> None:
    modules = _probe()["modules"]
    assert [m for m in ONLY_TO_SEND if m in modules] == []


def test_nothing_new_does_not_load_asyncssh(tmp_path: Path) -> None:
    result = _nothing_new(tmp_path, "confirmed")
    assert result["status"] == 0
    assert result["out"]["nothing_to_send"] is True
    assert [m for m in ONLY_TO_SEND if m in result["modules"]] == []


def test_dry_run_does_not_load_asyncssh(tmp_path: Path) -> None:
    result = _nothing_new(tmp_path, "dry-run")
    assert result["status"] == 0
    assert result["out"]["files"] == ["eprime/s01.txt", "s02.edat2"]
    assert [m for m in ONLY_TO_SEND if m in result["modules"]] == []


# What is loaded before ssh starts is on a send's critical path: the stream's modules (pack,
# tarfile), the receipt's and asyncio come later, while ssh connects; asyncssh only when OpenSSH
# cannot carry the upload; nothing of the server side ever.
NOT_TO_START_SSH = ("asyncio", "asyncssh", "tarfile", "yaml", "pydantic",
                    "dittohead.client.pack", "dittohead.client.reply", "dittohead.client.deliver",
                    "dittohead.client.transport.builtin", "dittohead.client.transport.login",
                    "dittohead.client.transport.hostkeys", "dittohead.core.receipt",
                    "dittohead.core.manifest")  # fmt: skip

# A stand-in for ssh that marks, in the file the client's ``-X importtime`` lines go to, the
# moment it started, and then gives up as ssh does (the client then falls back to asyncssh,
# which cannot connect to port 1).
STAND_IN = """#!/bin/sh
printf 'SSH STARTED\\n' >> "$DITTOHEAD_TEST_IMPORTS"
echo "stand-in: gave up" >&2
exit 255
"""


@pytest.mark.skipif(os.name == "nt", reason="the stand-in for ssh is a shell script")
def test_the_command_loads_only_the_client_until_ssh_starts(tmp_path: Path) -> None:
    folder = tmp_path / "pc"
    (folder / "eprime").mkdir(parents=True)
    (folder / "eprime" / "s01.txt").write_bytes(b"subject 1\n")
    (tmp_path / "kh").write_text("")
    ssh = tmp_path / "ssh"
    ssh.write_text(STAND_IN)
    ssh.chmod(0o755)
    imports = tmp_path / "imports.txt"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "DITTOHEAD_SSH": str(ssh),
           "DITTOHEAD_TEST_IMPORTS": str(imports)}  # fmt: skip
    argv = [sys.executable, "-I", "-X", "importtime", "-m", "dittohead.client.cli", "send",
            "--host", "127.0.0.1", "--port", "1", "--user", "u", "--known-hosts",
            str(tmp_path / "kh"), "--state", str(tmp_path / "st.json"), "--study", "nccam3",
            "--source", "brogden-a", str(folder)]  # fmt: skip
    # Appended to by both: each line lands in the order it was written.
    with open(imports, "a") as stderr:
        done = subprocess.run(
            argv, stderr=stderr, stdout=subprocess.DEVNULL, env=env, timeout=120, check=False
        )
    assert done.returncode == 69  # the fallback could not connect either: TransferError
    lines = imports.read_text().splitlines()
    assert "SSH STARTED" in lines, lines[-5:]
    before = lines[: lines.index("SSH STARTED")]
    # "import time: self [us] | cumulative | imported package" lines, the name last
    modules = {line.rsplit("|", 1)[-1].strip() for line in before if line.startswith("import")}
    assert "dittohead.client.transport.openssh" in modules
    assert [m for m in NOT_TO_START_SSH if m in modules] == []
    assert [m for m in modules if m.startswith("dittohead.receiver")] == []
    # and after ssh gave up, the fallback did load asyncssh: the marker is where it should be
    after = {line.rsplit("|", 1)[-1].strip() for line in lines[len(before) :]}
    assert "asyncssh" in after


def test_the_window_loads_no_receiver_and_no_server_dependencies() -> None:
    # The window's modules, all of them (the worker imports the sending side lazily; load it
    # too): nothing from the server side, nothing POSIX-only of ours.
    probe = PROBE.replace(
        "import dittohead.client.cli\n",
        "import dittohead.client.gui.app, dittohead.client.gui.presets_editor\n"
        "import dittohead.client.gui.worker, dittohead.client.plan.batches\n",
    )
    assert probe != PROBE
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe], check=False, capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0 and "tkinter" in done.stderr:
        pytest.skip("this Python has no tkinter (Debian: python3-tk)")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    modules = result["modules"]
    assert "dittohead.client.gui.app" in modules
    assert [m for m in modules if str(m).startswith("dittohead.receiver")] == []
    for server_only in ("sdnotify", "yaml", "pydantic", "aiosmtpd", "asyncssh"):
        assert server_only not in modules, f"{server_only} is loaded by the window"
    assert result["ours"] == []
