"""What the two services run by systemd share: ``--config``, ``--once`` and ``-v`` on their
command line, their log on stderr (the journal), and one catch site that turns a
`DittoheadError` into its one line and its exit code.

``dittohead-processor`` (`dittohead.receiver.processor.service`) and ``dittohead-notify``
(`dittohead.receiver.notify.cli`) each give their name, description and what to do with the
loaded configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from dittohead.core.errors import DittoheadError
from dittohead.receiver.config import DEFAULT_CONFIG
from dittohead.receiver.config.model import Config, load_config

log = logging.getLogger(__name__)


def run_service(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    once_help: str,
    work: Callable[[Config, bool], int],
) -> int:
    """Parse the command line, set up logging, load the configuration and run `work(config,
    once)`; return the exit status."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="the YAML configuration")
    parser.add_argument("--once", action="store_true", help=once_help)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return work(load_config(args.config), args.once)
    except DittoheadError as exc:
        print(exc.line(), file=sys.stderr)
        log.debug("details", exc_info=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
