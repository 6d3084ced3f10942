"""``make windows-pins``: re-pin ``requirements/windows.txt`` from ``requirements/windows.in``.

pip-compile cannot resolve for another platform, so this asks pip itself: ``pip download``
with the Windows target's tags resolves the names in windows.in (and their dependencies) to
win_amd64 wheels for CPython 3.11, and each wheel's sha256 becomes its pin. The versions
pinned now are kept as constraints unless ``--upgrade`` is given (as ``make pins`` keeps
them). The interpreter (``requirements/windows-python.txt``) is pinned by hand:
docs/development.md says how.

Usage: ``python packaging/windows/pins.py [--upgrade]``
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "packaging" / "windows"))
from build import TARGET, WHEELS_PINS  # noqa: E402  (this folder, not a package)

SOURCE = ROOT / "requirements" / "windows.in"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--upgrade", action="store_true", help="move every pin to the newest")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        extra: list[str] = []
        if not args.upgrade and WHEELS_PINS.is_file():
            pins = [m.group(0) for line in WHEELS_PINS.read_text().splitlines()
                    if (m := PIN.match(line))]  # fmt: skip
            (folder / "constraints.txt").write_text("\n".join(pins) + "\n")
            extra = ["-c", str(folder / "constraints.txt")]
        subprocess.run(
            [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", "download",
             *TARGET, "-d", str(folder / "wheels"), "-r", str(SOURCE), *extra],
            check=True,
        )  # fmt: skip
        lines = [
            "# The Windows client's inputs as win_amd64 wheels for CPython 3.11, hash-pinned.",
            "# Written by `make windows-pins` (packaging/windows/pins.py) from windows.in.",
        ]
        for wheel in sorted((folder / "wheels").glob("*.whl"), key=lambda p: p.name.lower()):
            name, ver = wheel.name.split("-")[:2]
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            lines.append(f"{name.replace('_', '-').lower()}=={ver} \\")
            lines.append(f"    --hash=sha256:{digest}")
    WHEELS_PINS.write_text("\n".join(lines) + "\n")
    print(f"wrote {WHEELS_PINS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
