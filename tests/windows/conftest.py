"""The windows tier: dittohead.exe, dittohead-gui.exe and the installer, built once per session
by `make windows` (packaging/windows/build.py, which keeps its results in build/windows/ and
rebuilds only what changed), run under Wine against the real sshd tier.

The programs run in a Wine prefix of their own (build/windows/wine-test, kept between runs like
the build's), on an Xvfb display of the session's; their standard output is always a pipe
(Wine's Python cannot start on a file).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.integration.harness import REPO, require
from tests.support.desktop import xvfb

TOOLS = ("wine", "wineserver", "makensis", "osslsigncode", "x86_64-w64-mingw32-gcc")


def _build_module() -> ModuleType:
    path = REPO / "packaging" / "windows" / "build.py"
    spec = importlib.util.spec_from_file_location("dittohead_windows_build", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True, slots=True)
class Windows:
    """The built programs and a Wine prefix to run them in."""

    dist: Path
    prefix: Path
    build: ModuleType
    #: the X display (Xvfb) every program of the prefix draws on
    display: str

    @property
    def exe(self) -> Path:
        return self.dist / "dittohead.exe"

    @property
    def gui_exe(self) -> Path:
        return self.dist / "dittohead-gui.exe"

    @property
    def drive_c(self) -> Path:
        return self.prefix / "drive_c"

    def path(self, linux: Path) -> str:
        """A Linux path as the Windows programs see it (Z:)."""
        return str(self.build.windows_path(linux))

    def env(self, **extra: str) -> dict[str, str]:
        env: dict[str, str] = self.build.wine_env(self.prefix, display=self.display)
        env.pop("DITTOHEAD_SSH", None)
        env.update(extra)
        return env

    def run(
        self, *argv: str | Path, timeout: float = 180, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["wine", *map(str, argv)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self.env(**extra),
            timeout=timeout,
            check=False,
        )

    def popen(self, *argv: str | Path, **extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["wine", *map(str, argv)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(**extra),
            start_new_session=True,  # its own process group, to be cut off as a whole
        )

    @staticmethod
    def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        """Until `condition` holds: an uninstaller runs on from a copy of itself after the
        one started has returned (the prefix's server is persistent, so there is no waiting
        for the prefix to fall idle)."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
            time.sleep(0.1)


@pytest.fixture(scope="session")
def windows() -> Iterator[Windows]:
    for tool in TOOLS:
        require(shutil.which(tool) is not None, f"{tool} is missing (make test installs it)")
    build = _build_module()
    # Into dist/, as make windows: an unchanged tree is not frozen again.
    dist = REPO / "dist"
    done = subprocess.run(
        [sys.executable, str(REPO / "packaging" / "windows" / "build.py"), "--out", str(dist)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    prefix = build.BUILD / "wine-test"
    build.ensure_prefix(prefix)
    with xvfb() as display:
        yield from _session(Windows(dist, prefix, build, display))


def _session(win: Windows) -> Iterator[Windows]:
    """`win`'s prefix with a wineserver of its own for the session. Every program in it gets
    the tier's display, from the first on: Wine's desktop process (explorer.exe), started with
    the first program, decides for all of them where windows are drawn, and started without
    a display it would draw the window's exe nowhere."""
    env = win.env()
    # What an earlier, interrupted run left in the prefix goes first (its desktop would hold
    # on to a display that no longer exists).
    subprocess.run(["wineserver", "--kill"], env=env, check=False, timeout=60)
    subprocess.run(["wineserver", "--wait"], env=env, check=False, timeout=60)
    # The prefix's wineserver, started apart from any test's process group (a test that cuts
    # a send off kills its group), and kept until the session ends.
    server = subprocess.Popen(
        ["wineserver", "--persistent", "--foreground"], env=env, start_new_session=True
    )
    # Wine's own services (started with the first program) live as long as the server: they
    # are started here, on no pipe, or the first test's output pipe would never close.
    subprocess.run(
        ["wine", "cmd.exe", "/c", "exit"], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=120,
    )  # fmt: skip
    try:
        yield win
    finally:
        subprocess.run(["wineserver", "--kill"], env=env, check=False, timeout=60)
        server.wait(timeout=30)
