"""dittohead-setup-<version>.exe under Wine, silently, as lab IT pushes it (docs/admins/windows.md):
the program in Program Files, the machine-wide client.toml and known_hosts in
%PROGRAMDATA%\\dittohead where the installed client reads them; uninstalled silently, the
program goes and the machine's settings stay."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.windows.conftest import Windows

pytestmark = [pytest.mark.windows, pytest.mark.slow]

CONFIG = """\
[server]
host = "dropbox.lab.example.org"
known_hosts = 'C:\\ProgramData\\dittohead\\known_hosts'
station = "brogden-a"

[[preset]]
name = "nccam3"
study = "nccam3"
folder = 'C:\\Studies\\nccam3'
"""
KNOWN_HOSTS = "dropbox.lab.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedKeyOfTheLab\n"


def setup_exe(win: Windows) -> Path:
    return win.dist / f"dittohead-setup-{win.build.version()}.exe"


def test_silent_install_with_the_machine_config_then_silent_uninstall(
    windows: Windows, tmp_path: Path
) -> None:
    config, known = tmp_path / "lab-client.toml", tmp_path / "known_hosts"
    config.write_text(CONFIG)
    known.write_text(KNOWN_HOSTS)
    installed = windows.drive_c / "Program Files" / "dittohead"
    machine = windows.drive_c / "ProgramData" / "dittohead"
    for left in (installed, machine):  # by an earlier run (the prefix is kept)
        shutil.rmtree(left, ignore_errors=True)
    done = windows.run(
        setup_exe(windows), "/S",
        f"/CONFIG={windows.path(config)}", f"/KNOWNHOSTS={windows.path(known)}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (installed / "dittohead.exe").read_bytes() == windows.exe.read_bytes()
    assert (installed / "uninstall.exe").is_file()
    assert (machine / "client.toml").read_text() == CONFIG
    assert (machine / "known_hosts").read_text() == KNOWN_HOSTS

    # The installed client finds the machine-wide file by itself (DESIGN: %PROGRAMDATA%).
    listed = windows.run(installed / "dittohead.exe", "presets", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "nccam3" in listed.stdout and "C:\\\\Studies\\\\nccam3" in listed.stdout
    json.loads(listed.stdout)

    gone = windows.run(installed / "uninstall.exe", "/S")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    windows.wait_for(lambda: not installed.exists(), "the uninstaller removes Program Files")
    assert (machine / "client.toml").read_text() == CONFIG  # the lab's settings stay
    assert (machine / "known_hosts").read_text() == KNOWN_HOSTS


def test_a_named_config_that_is_missing_installs_nothing(windows: Windows, tmp_path: Path) -> None:
    installed = windows.drive_c / "Program Files" / "dittohead"
    done = windows.run(setup_exe(windows), "/S", f"/CONFIG={windows.path(tmp_path / 'nope')}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert not (installed / "dittohead.exe").exists()
