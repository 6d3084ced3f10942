"""Fixtures shared by the receiver, processor and admin tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.server import Server, make_server


@pytest.fixture
def server(tmp_path: Path) -> Server:
    """A dropbox, a study tree and a config under `tmp_path` (no sshd, no real users)."""
    return make_server(tmp_path)


def is_staging(fd: int) -> bool:
    """Whether `fd` is a folder inside the processor's private staging area."""
    return "/.dittohead/staging/" in os.readlink(f"/proc/self/fd/{fd}")
