"""A real X server (Xvfb) and a program's windows on it, driven with xdotool: what the window's
tiers share (tests/integration/test_gui.py runs ``dittohead-gui`` on it, tests/windows/ runs
``dittohead-gui.exe`` under Wine, which draws to the same kind of display).

A test talks to the program only through the X server: keys (Return, Escape, Alt + a
mnemonic, typed text) and the titles of the windows it opens (``xdotool search --name``).
With ``DITTOHEAD_SCREENSHOTS=FOLDER`` each state a test names is photographed into FOLDER
(what tests/gui/screenshots.py does for the docs).
"""

from __future__ import annotations

import ctypes
import ctypes.util
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

    def close_button(self, window: str) -> None:
        """What a window manager's close button does: a ``WM_DELETE_WINDOW`` message.

        Xvfb runs no window manager (and xdotool's ``windowclose`` destroys the window
        instead of asking it), so the test sends the ICCCM client message itself, through
        libX11, exactly as a window manager would."""
        send_delete_window(self.display, int(window))

    def shot(self, name: str) -> None:
        """The screen into ``$DITTOHEAD_SCREENSHOTS/<name>.png``, when that is set."""
        folder = os.environ.get("DITTOHEAD_SCREENSHOTS")
        if folder:
            self.screenshot(Path(folder) / f"{name}.png")


class _ClientMessage(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("serial", ctypes.c_ulong),
        ("send_event", ctypes.c_int),
        ("display", ctypes.c_void_p),
        ("window", ctypes.c_ulong),
        ("message_type", ctypes.c_ulong),
        ("format", ctypes.c_int),
        ("data", ctypes.c_long * 5),
    ]


class _XEvent(ctypes.Union):
    _fields_ = [("xclient", _ClientMessage), ("pad", ctypes.c_long * 24)]


def send_delete_window(display: str, window: int) -> None:
    name = ctypes.util.find_library("X11")
    require(name is not None, "libX11 is not installed (make test installs Xvfb, which needs it)")
    x11 = ctypes.CDLL(name)
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XInternAtom.restype = ctypes.c_ulong
    x11.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    x11.XSendEvent.argtypes = [
        ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_long, ctypes.POINTER(_XEvent)
    ]  # fmt: skip
    x11.XFlush.argtypes = [ctypes.c_void_p]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    dpy = x11.XOpenDisplay(display.encode())
    assert dpy, f"cannot open the display {display}"
    try:
        event = _XEvent()
        event.xclient.type = 33  # ClientMessage
        event.xclient.window = window
        event.xclient.message_type = x11.XInternAtom(dpy, b"WM_PROTOCOLS", 0)
        event.xclient.format = 32
        event.xclient.data[0] = x11.XInternAtom(dpy, b"WM_DELETE_WINDOW", 0)
        event.xclient.data[1] = 0  # CurrentTime
        assert x11.XSendEvent(dpy, window, 0, 0, ctypes.byref(event)), "XSendEvent failed"
        x11.XFlush(dpy)
    finally:
        x11.XCloseDisplay(dpy)


def colours(png: Path) -> int:
    """How many distinct colours `png` holds (a blank or black screen holds one or two)."""
    done = run("identify", "-format", "%k", png)
    return int(done.stdout.strip())
