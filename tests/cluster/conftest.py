"""The cluster tier: one real GlusterFS volume for the session, mounted twice (two "hosts")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import require
from tests.support import gluster


@pytest.fixture(scope="session")
def glusterfs() -> Iterator[gluster.Volume]:
    """A started volume, FUSE-mounted at ``mounts[0]`` and ``mounts[1]`` (with ACLs on)."""
    why = gluster.missing()
    require(why is None, why or "")
    with gluster.volume(copies=2) as vol:
        yield vol
