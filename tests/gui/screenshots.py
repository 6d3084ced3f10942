"""Refresh the pictures of docs/collectors/window.md: run the window's tier
(tests/integration/test_gui.py, real windows on Xvfb at 1024x700 sending through the real sshd
tier) and the Windows window's test (tests/windows/test_gui.py: dittohead-gui.exe under Wine,
built by make windows first) with ``DITTOHEAD_SCREENSHOTS`` set, so that each state is
photographed as it is tested.

Run as root (the tier makes users and an sshd): ``.venv/bin/python tests/gui/screenshots.py``.
Needs xvfb, xdotool, python3-tk and imagemagick (``import``), as ``make test`` installs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "docs" / "collectors" / "img"


def main() -> int:
    IMAGES.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DITTOHEAD_SCREENSHOTS": str(IMAGES)}
    tests = [
        REPO / "tests" / "integration" / "test_gui.py",
        REPO / "tests" / "windows" / "test_gui.py",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", *map(str, tests)],
        cwd=REPO,
        env=env,
        check=False,
    )
    if done.returncode == 0:
        print(f"pictures written to {IMAGES}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
