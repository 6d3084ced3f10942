"""dittohead.core.logs: loggers that load `logging` only for a record that can go out.

pytest itself has `logging` loaded, so what happens before it is loaded is seen in a fresh
interpreter (`_run`); once it is loaded the records go through it, seen here with caplog.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from dittohead.core import logs


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


def test_debug_and_info_do_not_load_logging_and_go_nowhere() -> None:
    done = _run(
        """
        import sys
        from dittohead.core import logs
        log = logs.getLogger("dittohead.x")
        log.debug("a debug line %s", 1)
        log.info("an info line")
        print("logging" in sys.modules)
        """
    )
    assert done.stdout == "False\n"
    assert done.stderr == ""


def test_a_warning_loads_logging_and_goes_out_as_without_setup() -> None:
    # No setup: logging's last resort writes the message to stderr, as a plain logger would.
    done = _run(
        """
        import sys
        from dittohead.core import logs
        logs.getLogger("dittohead.x").warning("disk %s is %d%% full", "a", 95)
        print("logging" in sys.modules)
        """
    )
    assert done.stdout == "True\n"
    assert done.stderr == "disk a is 95% full\n"


def test_the_waiting_setup_is_applied_before_the_first_record() -> None:
    done = _run(
        """
        import sys
        from dittohead.core import logs

        def setup():
            import logging
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("set up: %(levelname)s %(message)s"))
            logging.getLogger("dittohead").handlers[:] = [handler]
            logging.getLogger("dittohead").propagate = False

        logs.configure(setup)
        log = logs.getLogger("dittohead.x")
        log.debug("dropped")
        print("logging" in sys.modules)
        log.error("went %s", "wrong")
        """
    )
    assert done.stdout == "False\n"
    assert done.stderr == "set up: ERROR went wrong\n"


def test_a_setup_waits_also_when_something_else_loads_logging() -> None:
    # A library loads logging (and the setup is still waiting): the next record, even a debug
    # one, applies the setup first, so it decides whether the record goes out.
    done = _run(
        """
        import sys
        from dittohead.core import logs

        def setup():
            import logging
            logging.basicConfig(stream=sys.stderr, level=logging.DEBUG, format="%(message)s")

        logs.configure(setup)
        import logging
        logs.getLogger("dittohead.x").debug("seen")
        """
    )
    assert done.stderr == "seen\n"


def test_configure_now_sets_up_at_once_and_replaces_a_waiting_setup() -> None:
    done = _run(
        """
        import sys
        from dittohead.core import logs
        logs.configure(lambda: print("quiet setup"))
        logs.configure(lambda: print("verbose setup"), now=True)
        logs.getLogger("dittohead.x").warning("w")
        """
    )
    assert done.stdout == "verbose setup\n"  # the waiting one was dropped, not run later


def test_once_logging_is_loaded_records_go_through_it(caplog: pytest.LogCaptureFixture) -> None:
    log = logs.getLogger("dittohead.test_logs")
    with caplog.at_level(logging.DEBUG, logger="dittohead.test_logs"):
        log.debug("d %d", 1)
        log.info("i")
        log.warning("w")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("e")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "d 1"),
        ("INFO", "i"),
        ("WARNING", "w"),
        ("ERROR", "e"),
    ]
    assert caplog.records[-1].exc_info is not None
    # The records name the caller, not the logs module.
    assert {r.funcName for r in caplog.records} == {
        "test_once_logging_is_loaded_records_go_through_it"
    }
    assert {r.pathname for r in caplog.records} == {__file__}


def test_levels_still_decide_once_loaded(caplog: pytest.LogCaptureFixture) -> None:
    log = logs.getLogger("dittohead.test_logs_levels")
    with caplog.at_level(logging.WARNING, logger="dittohead.test_logs_levels"):
        log.debug("no")
        log.info("no")
        log.warning("yes")
    assert [r.getMessage() for r in caplog.records] == ["yes"]


def test_the_commands_do_not_load_logging_to_start() -> None:
    done = _run(
        """
        import sys
        import dittohead.client.cli, dittohead.client.transport.openssh, dittohead.client.pack
        import dittohead.receiver.upload.receive
        print("logging" in sys.modules)
        """
    )
    assert done.stdout == "False\n"


@pytest.mark.parametrize(
    ("verbose", "stderr"),
    [(0, "dittohead: warning: w\n"), (1, "dittohead: debug: d\ndittohead: warning: w\n")],
)
def test_the_client_says_warnings_in_its_own_words(verbose: int, stderr: str) -> None:
    done = _run(
        f"""
        import sys
        from dittohead.client import cli
        from dittohead.core import logs
        cli._setup_logging({verbose})
        log = logs.getLogger("dittohead.client.scan")
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
        from dittohead.core import logs
        receive._setup_logging({verbose})
        logs.getLogger("dittohead.receiver.upload.stage").warning("w")
        print(os.getpid())
        """
    )
    assert done.stderr == (f"dittohead-receive[{done.stdout.strip()}] w\n" if verbose else "")
