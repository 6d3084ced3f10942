"""The start-up budget, guarded: what each server entry point may load before it gets to work.

docs/performance.md ("Start-up") says which start-up costs matter: the receiver starts on every
upload, so it must not load pydantic, YAML or asyncssh (~0.1-0.2 s each) when the configuration's
checked copy is current; the processor and the admin tool must not load asyncssh (and with it
cryptography) unless a command needs it. Each test runs the real entry point in a fresh,
isolated interpreter with ``-X importtime`` and compares what it imported with its allowlist
of third-party packages and dittohead modules. (The client's boundary before ``ssh`` starts
is held by tests/unit/client/test_import_boundary.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support.server import make_server

#: third-party packages the server's commands are built on, and what they bring
PYDANTIC = {
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_extensions",
    "typing_inspection",
}


def imported(argv: list[str], env: dict[str, str] | None = None, stdin: bytes = b"") -> set[str]:
    """The modules `argv` (a ``-m`` module and its arguments) imported, from ``-X importtime``."""
    proc = subprocess.run(
        [sys.executable, "-I", "-X", "importtime", "-X", "utf8", *argv],
        input=stdin,
        capture_output=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    names = set()
    for line in proc.stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    assert names, proc.stderr.decode()
    return names


def third_party(modules: set[str]) -> set[str]:
    """The packages among `modules` installed in this environment's site-packages (not the
    interpreter's own start-up hooks, such as setuptools' `_distutils_hack`)."""
    site = Path(sysconfig.get_paths()["purelib"])
    return {
        name
        for name in {module.split(".")[0] for module in modules}
        if not name.startswith("_")
        and (any(site.glob(f"{name}/__init__.py")) or any(site.glob(f"{name}.py")))
    }


def dittohead_modules(modules: set[str]) -> set[str]:
    return {name for name in modules if name.startswith("dittohead.")}


@pytest.mark.parametrize("flag", ["", " zstd"], ids=["plain", "compression-asked"])
def test_the_receiver_loads_only_its_own_program_and_what_it_shares(
    tmp_path: Path, flag: str
) -> None:
    """Asking for compression loads nothing more either: zstandard (and the receiver's
    `unzstd`) are loaded at the first compressed member, never at start-up."""
    server = make_server(tmp_path)  # writes the checked copy, as dittohead-admin init does
    argv = ["-m", "dittohead.receiver.upload.receive", "--config", str(server.config_path)]
    env = {"SSH_ORIGINAL_COMMAND": f"dittohead upload v1 nccam3 brogden-a{flag}"}
    loaded = imported(argv, env)  # an empty upload: refused after a whole start
    assert third_party(loaded) == set()
    allowed = {
        "dittohead.core",
        "dittohead.receiver",
        "dittohead.receiver.accounts",
        "dittohead.receiver.config",
        "dittohead.receiver.config.checked",
        "dittohead.receiver.dropbox",
        "dittohead.receiver.fsops",
        "dittohead.receiver.fscaps",  # the commit's rename and syncs, per file system
        "dittohead.receiver.fsmodes",
        "dittohead.receiver.upload",
    }
    for name in dittohead_modules(loaded):
        assert name in allowed or name.startswith(
            ("dittohead.core.", "dittohead.receiver.upload.")
        ), name
    assert "dittohead.receiver.upload.unzstd" not in loaded


def test_the_processor_loads_no_ssh_library(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    argv = ["-m", "dittohead.receiver.processor.service", "--config", str(server.config_path)]
    loaded = imported([*argv, "--once"])
    assert third_party(loaded) <= PYDANTIC | {"yaml", "sdnotify"}
    assert not any(
        name.startswith(("dittohead.client", "dittohead.receiver.upload.")) for name in loaded
    )


@pytest.mark.parametrize(
    "command", [["--help"], ["check"], ["init"], ["history", "--study", "nccam3", "--json"]]
)
def test_the_admin_tool_loads_asyncssh_only_for_the_demo_and_keys(
    tmp_path: Path, command: list[str]
) -> None:
    server = make_server(tmp_path)
    argv = ["-m", "dittohead.receiver.admin", *command]
    if command != ["--help"]:
        argv += ["--config", str(server.config_path)]
    loaded = imported(argv)
    assert third_party(loaded) <= PYDANTIC | {"yaml"}
