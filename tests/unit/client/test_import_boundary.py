"""The collector's command loads nothing from the server side and nothing Linux-only of its own.

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


def test_cli_import_loads_neither_dataclasses_nor_typing() -> None:
    # Every send imports the CLI before anything else happens (and before ssh starts).
    modules = _probe()["modules"]
    assert [m for m in ("dataclasses", "inspect", "typing") if m in modules] == []


def test_client_code_imports_no_posix_only_module() -> None:
    assert _probe()["ours"] == []


# Runs the real command on a folder whose every file the state already confirms (and with
# --dry-run): nothing is to be sent, so asyncssh (~0.1 s to import) and the modules that need
# it must not have been loaded.
NOTHING_NEW = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from pathlib import Path

    folder, state_path, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    from dittohead.client.cli import main
    from dittohead.client.scan import scan
    from dittohead.client.state import load_state

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

ONLY_TO_SEND = ("asyncssh", "dittohead.client.send", "dittohead.client.login",
                "dittohead.client.hostkeys", "dittohead.client.pack", "dittohead.client.deliver",
                "dittohead.client.openssh", "dittohead.client.reply")  # fmt: skip


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


# What loading `openssh` (to start ssh, at the scan's first new file) may cost: everything
# before ssh starts is on a send's critical path, so the stream's modules (pack, tarfile,
# hashlib's OpenSSL), the receipt's and asyncio come later, while ssh connects.
# `dataclasses` (with `inspect`, ~4 ms, and ~0.4 ms per class it builds) is not among them: the
# values made before ssh starts (Server, UploadRequest, FileItem, Plan) are plain classes.
NOT_TO_START_SSH = ("asyncio", "asyncssh", "tarfile", "hashlib", "typing", "dataclasses",
                    "inspect", "shutil", "pathlib", "dittohead.client.pack",
                    "dittohead.client.reply", "dittohead.client.deliver",
                    "dittohead.core.receipt", "dittohead.core.manifest")  # fmt: skip

# What runs before ssh starts: the options, the state (given or the default file), the ssh
# program and its command line (the known-hosts file given or dittohead's own).
START_SSH = textwrap.dedent(
    """
    import json, os, sys
    from dittohead.client.cli import build_parser
    from dittohead.client import openssh
    from dittohead.client.job import Server
    from dittohead.client.state import load_state
    from dittohead.core.grammar import UploadRequest

    state_file = sys.argv[1]
    args = build_parser().parse_args([
        "send", "--host", "h", "--identity", "~/key", "--known-hosts", "kh", "--state",
        state_file, "--study", "nccam3", "--source", "brogden-a", "--json", "folder", "thing"])
    for state in (args.state, None):
        load_state(state, host="drop.example.org", port=22, study="nccam3", source="brogden-a")
    openssh.program()
    for server in (Server("h", identity=args.identity, known_hosts=args.known_hosts),
                   Server("h", user="u")):
        known = openssh.known_hosts_file(server)
        os.path.isfile(known)
        openssh.ssh_argv("ssh", server, UploadRequest("nccam3", "brogden-a"), known)
    print(json.dumps(sorted(sys.modules)))
    """
)


def test_starting_ssh_loads_only_what_it_needs(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text(
        '{"version":1,"server":"drop.example.org:22","study":"nccam3","source":"brogden-a",'
        '"files":{"a.txt":[1,2]}}'
    )
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "XDG_STATE_HOME": ""}
    done = subprocess.run(
        [sys.executable, "-I", "-c", START_SSH, str(state)], capture_output=True, text=True,
        check=True, timeout=60, env=env,
    )  # fmt: skip
    modules = json.loads(done.stdout)
    assert [m for m in NOT_TO_START_SSH if m in modules] == []
