"""Fixtures for the integration tiers."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Deployment, deployment


@pytest.fixture(scope="session")
def sshd_deployment() -> Iterator[Deployment]:
    # Not under pytest's tmp dir: that lives below a 0700 folder the collectors cannot cross.
    base = Path(tempfile.mkdtemp(prefix="dittohead-sshd-"))
    try:
        yield from deployment(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
