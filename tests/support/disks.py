"""A small real file system for the disk-level tests: a 4 MiB tmpfs mounted over a folder (as
root), filled to a chosen percentage with a file of its own."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def small_disk(folder: Path, size: str = "4m") -> Iterator[Path]:
    """`folder` as a tmpfs of `size` until the block ends (what was in it is hidden meanwhile:
    run ``dittohead-admin init`` again to make the destination on it)."""
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    assert mounted.returncode == 0, mounted.stderr.decode()
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_to(path: Path, percent: float) -> None:
    """Make `path` the size that leaves its file system `percent` full (synced)."""
    path.unlink(missing_ok=True)
    st = os.statvfs(path.parent)
    total = st.f_blocks * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    want = int(total * percent / 100) - used
    with open(path, "wb") as f:
        f.write(b"\x01" * max(want, 0))
        f.flush()
        os.fsync(f.fileno())
