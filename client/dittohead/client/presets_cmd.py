"""``dittohead presets`` and how a send's options are settled from a preset.

`settle` turns ``dittohead send``'s command line and the client configuration (`presets`) into
the one `Settled` a send (or a status query) uses: any option given on the command line wins,
then the preset, then ``[server]``, then the built-in defaults. `cmd_presets` lists the presets.
Only this module and `cli` print.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dittohead.client import presets
from dittohead.client.plan.job import Job, prepare
from dittohead.client.plan.layout import misnamed_folder
from dittohead.client.presets import ClientConfig, Preset
from dittohead.client.transport import DEFAULT_PORT, Server, login_name
from dittohead.core.errors import ConfigError, UsageError
from dittohead.core.grammar import check_source, check_study

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Settled:
    """Everything a send needs to know, wherever each value came from."""

    server: Server
    study: str
    source: str
    folder: str | None
    things: tuple[str, ...]
    preset: Preset | None
    config: ClientConfig

    def prepare(self, *, state: str | None, on_new: Callable[[], None] | None = None) -> Job:
        """The send of this folder (`plan.job.prepare`), with the warning a collector needs
        when the folder looks like one of the study's subfolders (`plan.layout`)."""
        assert self.folder is not None
        job = prepare(
            self.server,
            study=self.study,
            source=self.source,
            folder=self.folder,
            things=self.things,
            state=state,
            on_new=on_new,
        )
        misnamed = misnamed_folder(job.scanned.root, job.request.study, job.state.files)
        if misnamed is not None:
            log.warning("%s", misnamed)
        return job


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the client configuration (default: $DITTOHEAD_CONFIG, else the per-user "
        "file over the machine-wide one)",
    )


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "presets",
        help="list the presets of this PC",
        description="List the presets in the client configuration (client.toml).",
    )
    add_config_option(parser)
    parser.add_argument("--json", action="store_true", help="print them as one JSON object")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="say more")


def port_number(text: str) -> int:
    """An SSH port given on the command line (argparse's ``type``)."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return port


def split_host(text: str) -> tuple[str, int | None]:
    """``name``, ``name:port``, ``[v6 address]:port`` or a bare IPv6 address → (host, port).

    Collectors copy servers as they see them written (``drop.example.org:2222``, as in a
    browser or a known_hosts file); a bare IPv6 address has several colons and no port.
    """
    host, port = text.strip(), None
    if host.startswith("["):
        inside, bracket, rest = host[1:].partition("]")
        if not bracket or not inside or (rest and not rest.startswith(":")):
            raise UsageError(f"--host {text!r} is not a server: write [ADDRESS] or [ADDRESS]:PORT")
        host, port_text = inside, rest[1:] if rest else None
    elif host.count(":") == 1:
        host, port_text = host.split(":")
    else:
        port_text = None
    if port_text is not None:
        try:
            port = port_number(port_text)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"--host {text!r}: {exc}") from None
    if not host:
        raise UsageError(f"--host {text!r} names no server")
    return host, port


def settle(
    args: argparse.Namespace, *, need_folder: bool = True, need_source: bool = True
) -> Settled:
    """The send's settings: the command line over the preset over ``[server]``.

    The study and the station are checked first (they go on the wire), then the rest.
    """
    config = presets.load(args.config)
    preset = config.preset(args.preset) if args.preset else None
    study = args.study or (preset.study if preset else None)
    source = args.source or config.server.station or ""
    if not study:
        raise UsageError("no study given: use --study S or --preset NAME (see 'dittohead presets')")
    check_study(study)
    if not source and need_source:
        raise UsageError(
            "no station given: use --source ID (or set station in the [server] table of "
            "client.toml)"
        )
    if source:
        check_source(source)
    given = args.host or config.server.host or os.environ.get("DITTOHEAD_HOST")
    if not given:
        raise UsageError(
            "no server given: use --host (or set DITTOHEAD_HOST, or host in client.toml)"
        )
    host, port = split_host(given)
    if port is not None and args.port is not None and port != args.port:
        raise UsageError(
            f"the server {given!r} says port {port} but --port says {args.port}: give the port once"
        )
    user = args.user or (preset.user if preset else None) or login_name()
    identity = args.identity or (preset.identity if preset else None)
    server = Server(
        host=host,
        port=port or args.port or config.server.port or DEFAULT_PORT,
        user=user,
        identity=identity,
        known_hosts=args.known_hosts or config.server.known_hosts,
    )
    folder: str | None = getattr(args, "folder", None)
    things: tuple[str, ...] = tuple(getattr(args, "things", ()) or ())
    if folder is None and preset is not None and need_folder:
        folder = preset.checked_folder()
        things = things or preset.things
    if folder is None and need_folder:
        raise UsageError("no folder given: name the FOLDER to send, or use --preset NAME")
    return Settled(server, study, source, folder, things, preset, config)


def remember(settled: Settled, args: argparse.Namespace) -> None:
    """After a send that logged in: keep a login typed with ``--user`` for the preset, in the
    per-user file (never a password: there is nowhere to put one)."""
    if settled.preset is None or not args.user or settled.config.user_file is None:
        return
    if settled.preset.user == args.user:
        return
    try:
        presets.remember_login(settled.config.user_file, settled.preset.name, args.user)
    except (OSError, ConfigError) as exc:
        # The data is sent; not remembering a login is no reason to say otherwise.
        log.warning("could not remember the login in %s: %s", settled.config.user_file, exc)


def cmd_presets(args: argparse.Namespace) -> int:
    config = presets.load(args.config)
    rows = [
        {
            "name": p.name,
            "study": p.study,
            "folder": p.folder,
            "folder_exists": p.folder is not None and os.path.isdir(p.folder),
            "things": list(p.things),
            "user": p.user,
            "identity": p.identity,
        }
        for p in config.presets
    ]
    if args.json:
        server = config.server
        doc = {
            "files": list(config.files),
            "server": {
                "host": server.host,
                "port": server.port,
                "known_hosts": server.known_hosts,
                "station": server.station,
            },
            "presets": rows,
        }
        print(json.dumps(doc, ensure_ascii=False))
        return 0
    if not rows:
        where = ", ".join(config.files) or "no client.toml was found"
        print(f"no presets ({where}); ask your admin, or see docs/collectors/")
        return 0
    for row in rows:
        things = f" [{', '.join(row['things'])}]" if row["things"] else ""  # type: ignore[arg-type]
        missing = "" if row["folder_exists"] else "  (folder not on this PC)"
        print(f"{row['name']}: study {row['study']}, {row['folder']}{things}{missing}")
    return 0
