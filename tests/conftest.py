"""Test tiers by marker (see pyproject.toml): a test that needs root says so with
``@pytest.mark.root`` (or ``sshd``) instead of skipping itself.

Without root such tests are skipped with that reason; in CI (``CI`` set), which runs as root,
they fail instead, so that a tier can never be skipped there and reported as passing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Deployment, deployment

_NEEDS_ROOT = ("root", "sshd", "cluster")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if os.geteuid() == 0:
        return
    for name in _NEEDS_ROOT:
        if item.get_closest_marker(name) is not None:
            why = f"needs root (marked {name})"
            if os.environ.get("CI"):
                pytest.fail(f"{why}, and CI must run every tier: run it as root")
            pytest.skip(why)


@pytest.fixture(params=["native", "fallback"])
def fs_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test twice: with the primitives this file system offers, and with every fallback
    of `dittohead.receiver.fscaps` forced (``DITTOHEAD_FS_FALLBACKS=1``, which the processes
    a test starts inherit), so that the guarantees are checked in both modes without a
    cluster file system. Use as ``pytestmark = pytest.mark.usefixtures("fs_mode")``."""
    from dittohead.receiver import fscaps

    if request.param == "fallback":
        monkeypatch.setenv(fscaps.FORCE_ENV, "1")
    else:
        monkeypatch.delenv(fscaps.FORCE_ENV, raising=False)
    fscaps.forget()
    return str(request.param)


@pytest.fixture(scope="session")
def sshd_deployment() -> Iterator[Deployment]:
    """The real sshd tier (`harness.deployment`), one per session for every tier that sends
    through it (integration, window, windows)."""
    # Not under pytest's tmp dir: that lives below a 0700 folder the collectors cannot cross.
    base = Path(tempfile.mkdtemp(prefix="dittohead-sshd-"))
    try:
        yield from deployment(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
