"""``dittohead-admin``: the admin's and study runner's command line (one catch site)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from dittohead.core.errors import DittoheadError
from dittohead.receiver.admin import check_cmd, demo_cmd, history_cmd, init_cmd, sshd_cmd
from dittohead.receiver.config import DEFAULT_CONFIG
from dittohead.receiver.config.checked import check_config
from dittohead.receiver.config.model import Config, load_config

Handler = Callable[[Config, argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=str(DEFAULT_CONFIG), help="the YAML configuration file")
    common.add_argument("-v", "--verbose", action="store_true", help="show details of errors")
    parser = argparse.ArgumentParser(
        prog="dittohead-admin", description="Set up and inspect a dittohead server."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init_cmd.add_parser(sub, common)
    check_cmd.add_parser(sub, common)
    history_cmd.add_parsers(sub, common)
    sshd_cmd.add_parsers(sub, common)
    demo_cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "demo":
            return demo_cmd.run(args)
        # init and check are what an admin runs after editing the YAML: they check it in full
        # and (as its owner) write the checked copy the receiver and processor start from.
        if args.command in ("init", "check"):
            config = check_config(args.config)
        else:
            config = load_config(args.config)
        handler: Handler = args.handler
        return int(handler(config, args))
    except DittoheadError as exc:
        print(exc.line(), file=sys.stderr)
        if verbose:
            logging.getLogger(__name__).exception("details")
        return exc.exit_code
    except KeyboardInterrupt:
        print("dittohead: interrupted", file=sys.stderr)
        return 130
