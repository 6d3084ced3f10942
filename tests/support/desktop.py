"""A real X server (Xvfb) and a program's windows on it, driven with xdotool: what the window's
tiers share (tests/integration/test_gui.py runs ``dittohead-gui`` on it, tests/windows/ runs
``dittohead-gui.exe`` under Wine, which draws to the same kind of display).

A test talks to the program only through the X server: keys (Return, Escape, Alt + a
mnemonic, typed text) and the titles of the windows it opens (``xdotool search --name``).
With ``DITTOHEAD_SCREENSHOTS=FOLDER`` each state a test names is photographed into FOLDER
(what tests/gui/screenshots.py does for the docs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.integration.harness import require, run

SCREEN = "1024x700x24"
WAIT = 30.0


@contextmanager
def xvfb(screen: str = SCREEN) -> Iterator[str]:
    """An Xvfb of its own (the first free display from :70), yielding its DISPLAY."""
    for tool in ("Xvfb", "xdotool"):
        require(shutil.which(tool) is not None, f"{tool} is not installed (make test installs it)")
    number = next(n for n in range(70, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    server = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", screen, "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/.X11-unix/X{number}").exists():
            assert server.poll() is None and time.monotonic() < deadline, "Xvfb did not start"
            time.sleep(0.05)
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(timeout=10)


class Screen:
    """One program (`proc`) showing its windows on `display`."""

    def __init__(self, display: str, proc: subprocess.Popen[str]) -> None:
        self.display = display
        self.proc = proc

    def xdotool(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run("xdotool", *args, check=False, env={**os.environ, "DISPLAY": self.display})

    def windows(self, pattern: str) -> list[str]:
        found = self.xdotool("search", "--onlyvisible", "--name", pattern)
        return found.stdout.split()

    def wait_for(self, pattern: str, timeout: float = WAIT) -> str:
        """The window whose title matches `pattern`, once it shows."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.windows(pattern)
            if found:
                time.sleep(0.2)  # drawn and given its focus
                return found[-1]
            assert self.proc.poll() is None, f"the window ended: {self.proc.communicate()}"
            time.sleep(0.1)
        titles = [self.xdotool("getwindowname", w).stdout.strip() for w in self.windows(".")]
        raise AssertionError(f"no window {pattern!r} within {timeout} s; there are: {titles}")

    def keys(self, window: str, *keys: str) -> None:
        # No window manager: the test gives the focus, as a collector's click would.
        self.xdotool("windowfocus", "--sync", window)
        for key in keys:
            self.xdotool("key", "--clearmodifiers", key)
            time.sleep(0.05)

    def type(self, window: str, text: str) -> None:
        self.xdotool("windowfocus", "--sync", window)
        self.xdotool("type", "--delay", "20", text)

    def screenshot(self, path: Path) -> Path:
        """The whole screen as a PNG at `path` (imagemagick's ``import``)."""
        time.sleep(0.3)
        run("import", "-window", "root", path, env={**os.environ, "DISPLAY": self.display})
        return path

    def shot(self, name: str) -> None:
        """The screen into ``$DITTOHEAD_SCREENSHOTS/<name>.png``, when that is set."""
        folder = os.environ.get("DITTOHEAD_SCREENSHOTS")
        if folder:
            self.screenshot(Path(folder) / f"{name}.png")


def colours(png: Path) -> int:
    """How many distinct colours `png` holds (a blank or black screen holds one or two)."""
    done = run("identify", "-format", "%k", png)
    return int(done.stdout.strip())
