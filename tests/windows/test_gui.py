"""dittohead-gui.exe under Wine, which draws its windows on an X display (Xvfb here), driven
with xdotool as tests/integration/test_gui.py drives the window on Linux
(tests/support/desktop.py): the window opens showing the preset, and Return sends it through
the real sshd tier (a key-based preset, the server's key pinned: Wine has no ssh.exe, so this
is asyncssh) and the data lands in the study tree. A screenshot proves the window was drawn,
not just created."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.integration.harness import Deployment
from tests.support.desktop import Screen, colours
from tests.support.invariants import tree_files
from tests.windows.conftest import Windows

pytestmark = [pytest.mark.windows, pytest.mark.sshd, pytest.mark.root, pytest.mark.slow]

PRESET = "w31"


def write_config(win: Windows, dep: Deployment, path: Path) -> Path:
    path.write_text(
        "[server]\n"
        'host = "127.0.0.1"\n'
        f"port = {dep.port}\n"
        'station = "brogden-a"\n'
        f"known_hosts = '{win.path(dep.known_hosts)}'\n"
        "\n"
        "[[preset]]\n"
        f'name = "{PRESET}"\n'
        f'study = "{dep.study}"\n'
        f"folder = 'C:\\Studies\\{PRESET}'\n"
        'things = ["eprime"]\n'
        f'user = "{dep.collector}"\n'
        f"identity = '{win.path(dep.key(dep.collector))}'\n"
    )
    return path


def landed(dep: Deployment, files: dict[str, bytes]) -> bool:
    done = dep.process()
    assert done.returncode == 0, done.stderr
    stored = tree_files(dep.destination)
    return all(stored.get(rel) == data for rel, data in files.items())


def test_the_window_opens_and_return_sends_the_preset(
    windows: Windows, sshd_deployment: Deployment, tmp_path: Path
) -> None:
    dep = sshd_deployment
    folder = windows.drive_c / "Studies" / PRESET
    shutil.rmtree(folder, ignore_errors=True)
    sent = {"eprime/w31.txt": b"subject w31\r\n", "eprime/w31.edat3": os.urandom(200_000)}
    for rel, data in {**sent, "biopac/w31.acq": b"not ticked"}.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    # What an earlier run of the tier sent is remembered in the kept prefix's per-user state.
    for state in windows.drive_c.glob("users/*/AppData/Local/dittohead"):
        shutil.rmtree(state)
    config = write_config(windows, dep, tmp_path / "client.toml")

    proc = windows.popen(windows.gui_exe, "--config", windows.path(config), "--preset", PRESET)
    screen = Screen(windows.display, proc)
    try:
        main = screen.wait_for("^dittohead$", timeout=120)  # a one-file exe unpacks first
        picture = screen.screenshot(tmp_path / "window.png")
        screen.shot("window-windows")
        # Drawn: the preset's fields, buttons and text, not one flat colour.
        assert colours(picture) > 16, "the window is blank"
        screen.keys(main, "Return")
        deadline = time.monotonic() + 120
        while not landed(dep, sent):
            assert time.monotonic() < deadline, f"not sent: {tree_files(dep.destination)}"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        assert "biopac/w31.acq" not in tree_files(dep.destination)  # the preset's thing only
        screen.keys(main, "alt+q")  # Quit
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    # A program without a console says everything in its window.
    assert err == "", err
