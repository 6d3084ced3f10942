"""dittohead.core.quiet: a dependency's notices about asyncssh's code are ignored; dittohead's
own warnings, other libraries' and other categories are not."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest

from dittohead.core.quiet import silence_dependency_warnings


class DeprecatedUpstream(UserWarning):
    """Stands in for cryptography's CryptographyDeprecationWarning (a UserWarning)."""


@pytest.mark.parametrize(
    ("module", "category", "shown"),
    [
        ("asyncssh.crypto.misc", DeprecatedUpstream, False),
        ("asyncssh.crypto.dsa", DeprecatedUpstream, False),
        ("asyncssh", UserWarning, False),
        # dittohead's own warnings, whatever they say
        ("dittohead.client.plan.scan", UserWarning, True),
        ("dittohead.receiver.config", DeprecatedUpstream, True),
        ("dittohead.core.quiet", DeprecationWarning, True),
        # other libraries, and modules that only look like asyncssh's
        ("cryptography.utils", DeprecatedUpstream, True),
        ("asyncsshx", UserWarning, True),
        ("not_asyncssh.misc", UserWarning, True),
        # other categories from asyncssh
        ("asyncssh.connection", RuntimeWarning, True),
        ("asyncssh.connection", ResourceWarning, True),
        ("asyncssh.connection", DeprecationWarning, True),
    ],
)
def test_only_user_warnings_from_asyncssh_s_modules_are_ignored(
    module: str, category: type[Warning], shown: bool
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        silence_dependency_warnings()
        warnings.warn_explicit("X is deprecated", category, f"{module}.py", 1, module=module)
    assert len(caught) == (1 if shown else 0)


def test_it_is_idempotent() -> None:
    with warnings.catch_warnings():
        silence_dependency_warnings()
        before = list(warnings.filters)
        silence_dependency_warnings()
        assert warnings.filters == before


def test_in_a_command_asyncssh_is_quiet_and_dittohead_is_heard() -> None:
    # A fresh interpreter, as a command starts: importing dittohead.core installs the filter.
    code = """
        import warnings
        import dittohead.core
        import logging
        import asyncssh
        warnings.warn("our own warning", UserWarning)
        warnings.warn("our own notice that something is deprecated", UserWarning)
        logging.getLogger("dittohead.x").warning("our own log warning")
    """
    done = subprocess.run(
        [sys.executable, "-I", "-c", textwrap.dedent(code)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert "asyncssh" not in done.stderr
    assert "UserWarning: our own warning" in done.stderr
    assert "UserWarning: our own notice that something is deprecated" in done.stderr
    assert done.stderr.endswith("our own log warning\n")
