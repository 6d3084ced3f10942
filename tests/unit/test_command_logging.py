"""What the commands' log says, and to whom: the client's warnings in its own words on stderr,
the receiver's nothing to the collector unless verbose. Each runs in a fresh interpreter, as the
commands do (pytest's own logging setup would otherwise be in the way)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("verbose", "stderr"),
    [(0, "dittohead: warning: w\n"), (1, "dittohead: debug: d\ndittohead: warning: w\n")],
)
def test_the_client_says_warnings_in_its_own_words(verbose: int, stderr: str) -> None:
    done = _run(
        f"""
        import sys
        from dittohead.client import cli
        import logging
        cli._setup_logging({verbose})
        log = logging.getLogger("dittohead.client.plan.scan")
        log.debug("d")
        log.warning("w")
        """
    )
    assert done.stderr == stderr


@pytest.mark.parametrize("verbose", [False, True])
def test_the_receiver_tells_the_collector_nothing_unless_verbose(verbose: bool) -> None:
    done = _run(
        f"""
        import os
        from dittohead.receiver.upload import receive
        import logging
        receive._setup_logging({verbose})
        logging.getLogger("dittohead.receiver.upload.stage").warning("w")
        print(os.getpid())
        """
    )
    assert done.stderr == (f"dittohead-receive[{done.stdout.strip()}] w\n" if verbose else "")
