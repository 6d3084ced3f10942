"""The installed commands say nothing on stderr but dittohead's own words.

Each command in ``[project.scripts]`` is run as a user runs it (the script in the virtual
environment's ``bin``, its own process): ``--help`` must exit 0 with an empty stderr, and a
real run that loads asyncssh on both sides (``dittohead-admin demo`` with the client's built-in
asyncssh transport, ~3 s) must show no dependency's warning and no traceback anywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCRIPTS = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | env
    return subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=120, env=environ,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_every_command_is_checked() -> None:
    # A command added to pyproject.toml is run below without anyone listing it here.
    assert {"dittohead", "dittohead-receive", "dittohead-processor", "dittohead-admin"} <= set(
        SCRIPTS
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_0_with_nothing_on_stderr(script: str) -> None:
    path = BIN / script
    assert path.is_file(), f"{path} is not installed (make bootstraps .venv with it)"
    done = _run([str(path), "--help"])
    assert (done.returncode, done.stderr) == (0, "")
    assert script in done.stdout


@pytest.mark.parametrize(
    "argv", [["dittohead", "send", "--help"], ["dittohead-admin", "demo", "--help"]]
)
def test_a_subcommand_s_help_has_nothing_on_stderr(argv: list[str]) -> None:
    done = _run([str(BIN / argv[0]), *argv[1:]])
    assert (done.returncode, done.stderr) == (0, "")


def test_a_real_run_through_asyncssh_shows_no_dependency_warning() -> None:
    # The demo's own process loads asyncssh (its stand-in SSH server) and so does each
    # `dittohead send` it starts, told to use asyncssh instead of OpenSSH; the sends' stdout
    # and stderr are shown in the demo's stdout.
    done = _run([str(BIN / "dittohead-admin"), "demo"], DITTOHEAD_SSH="builtin")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Sent and confirmed by the server." in done.stdout
    for text in (done.stdout, done.stderr):
        assert "Warning" not in text
        assert "Traceback" not in text
    # What reaches stderr at all is dittohead's own words.
    assert [line for line in done.stderr.splitlines() if not line.startswith("dittohead")] == []
