"""dittohead-setup-<version>.exe under Wine, silently, as lab IT pushes it (docs/admins/windows.md):
the programs in Program Files and the window in the Start menu, the machine-wide client.toml
and known_hosts in %PROGRAMDATA%\\dittohead where the installed client reads them, named by a
path with spaces in either quoting (a script's ``/CONFIG="…"``, or the whole option quoted as
Windows quotes an argument); uninstalled silently, the programs go and the machine's settings
stay. A named file that is missing installs nothing."""

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


def lab_files(tmp_path: Path) -> tuple[Path, Path]:
    """The lab's client.toml and known_hosts, in a folder whose name has a space."""
    folder = tmp_path / "lab files"
    folder.mkdir()
    config, known = folder / "lab client.toml", folder / "known_hosts"
    config.write_text(CONFIG)
    known.write_text(KNOWN_HOSTS)
    return config, known


def clean(windows: Windows) -> tuple[Path, Path, Path]:
    """Program Files, %PROGRAMDATA% and the Start menu entry, emptied of an earlier run's (the
    prefix is kept)."""
    installed = windows.drive_c / "Program Files" / "dittohead"
    machine = windows.drive_c / "ProgramData" / "dittohead"
    menu = windows.drive_c / "ProgramData" / "Microsoft" / "Windows" / "Start Menu" / "Programs"
    for left in (installed, machine):
        shutil.rmtree(left, ignore_errors=True)
    (menu / "dittohead.lnk").unlink(missing_ok=True)
    return installed, machine, menu / "dittohead.lnk"


def test_silent_install_with_the_machine_config_then_silent_uninstall(
    windows: Windows, tmp_path: Path
) -> None:
    config, known = lab_files(tmp_path)
    installed, machine, shortcut = clean(windows)
    # Each option one argument with a space in it: Wine quotes the whole of it, as Windows does.
    done = windows.run(
        setup_exe(windows), "/S",
        f"/CONFIG={windows.path(config)}", f"/KNOWNHOSTS={windows.path(known)}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (installed / "dittohead.exe").read_bytes() == windows.exe.read_bytes()
    assert (installed / "dittohead-gui.exe").read_bytes() == windows.gui_exe.read_bytes()
    assert (installed / "uninstall.exe").is_file()
    # The window in the Start menu, for every user, pointing at the installed program.
    assert b"dittohead-gui.exe" in shortcut.read_bytes()
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
    assert not shortcut.exists()
    assert (machine / "client.toml").read_text() == CONFIG  # the lab's settings stay
    assert (machine / "known_hosts").read_text() == KNOWN_HOSTS


def test_a_script_quoting_paths_with_spaces_installs_the_lab_files(
    windows: Windows, tmp_path: Path
) -> None:
    config, known = lab_files(tmp_path)
    installed, machine, _shortcut = clean(windows)
    # As lab IT writes it in a deployment script, run by cmd.exe as written.
    script = tmp_path / "install.cmd"
    script.write_text(
        f'"{windows.path(setup_exe(windows))}" /S /CONFIG="{windows.path(config)}"'
        f' /KNOWNHOSTS="{windows.path(known)}"\r\n'
        "exit /b %ERRORLEVEL%\r\n"
    )
    done = windows.run("cmd.exe", "/c", windows.path(script))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (installed / "dittohead.exe").is_file()
    assert (machine / "client.toml").read_text() == CONFIG
    assert (machine / "known_hosts").read_text() == KNOWN_HOSTS
    gone = windows.run(installed / "uninstall.exe", "/S")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    windows.wait_for(lambda: not installed.exists(), "the uninstaller removes Program Files")


@pytest.mark.parametrize("option", ["/CONFIG", "/KNOWNHOSTS"])
@pytest.mark.parametrize("quoting", ["whole", "value"])
def test_a_named_file_that_is_missing_installs_nothing(
    windows: Windows, tmp_path: Path, option: str, quoting: str
) -> None:
    installed, machine, shortcut = clean(windows)
    missing = windows.path(tmp_path / "lab files" / "not there.toml")
    if quoting == "whole":  # one argument, quoted whole by Wine
        done = windows.run(setup_exe(windows), "/S", f"{option}={missing}")
    else:  # as a script writes it
        script = tmp_path / "install.cmd"
        script.write_text(
            f'"{windows.path(setup_exe(windows))}" /S {option}="{missing}"\r\n'
            "exit /b %ERRORLEVEL%\r\n"
        )
        done = windows.run("cmd.exe", "/c", windows.path(script))
    assert done.returncode == 2, done.stdout + done.stderr
    assert not installed.exists() and not machine.exists() and not shortcut.exists()
