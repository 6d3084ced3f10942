"""``dittohead status``: what became of my own uploads to a study.

It asks the server ``dittohead status v1 <study>`` (docs/protocol.md) over the same front door
as an upload (OpenSSH's ``ssh`` when it can log in by itself, else asyncssh, which may ask for
a password) and shows the answer: each upload waiting, finalized (each file's ``stored_as``,
duplicates) or quarantined (the reason). The server decides whose uploads those are from the
account that logged in; nothing the client sends names a user.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from dittohead.client.presets_cmd import add_config_option, port_number, settle
from dittohead.client.transport import Answer, Prompts, Server, Unusable, openssh
from dittohead.core.errors import TransferError
from dittohead.core.grammar import StatusRequest


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "status",
        help="what became of my uploads",
        description=(
            "Show what became of your own uploads to a study: waiting, finalized (where each "
            "file was stored) or quarantined (and why). Newest first."
        ),
    )
    parser.add_argument("--preset", metavar="NAME", help="the preset's server and study")
    add_config_option(parser)
    parser.add_argument(
        "--host",
        help="the server, as NAME or NAME:PORT (default: client.toml, else $DITTOHEAD_HOST)",
    )
    parser.add_argument("--port", type=port_number, help="SSH port (default: client.toml, else 22)")
    parser.add_argument("--user", help="your user name on the server")
    parser.add_argument("--identity", metavar="KEY", help="SSH private key to log in")
    parser.add_argument("--known-hosts", metavar="FILE", help="pinned server keys")
    parser.add_argument("--study", help="the study (default: the preset's)")
    parser.add_argument("--source", metavar="ID", help="only this station's uploads")
    parser.add_argument("--json", action="store_true", help="print the server's answer as JSON")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="say more")


def ask(server: Server, request: StatusRequest, prompts: Prompts | None) -> dict[str, Any]:
    """The server's answer to `request`, checked to be a status document."""
    answer: Answer | None = None
    session = openssh.start(server, request)
    if session is not None:
        try:
            answer = session.ask()
        except Unusable:
            answer = None  # asyncssh tries and explains
    if answer is None:
        from dittohead.client.transport.builtin import AsyncsshTransport

        answer = AsyncsshTransport(server, request, prompts).ask()
    if answer.status != 0:
        from dittohead.client.reply import server_failure  # with pack: only for an answer

        raise server_failure(answer.status, answer.stderr, server.host)
    try:
        doc = json.loads(answer.stdout.decode("utf-8"))
        if not isinstance(doc, dict) or not isinstance(doc.get("uploads"), list):
            raise ValueError("no uploads")
    except ValueError:
        raise TransferError(
            f"the server {server.host} did not answer with a dittohead status; is it a "
            "dittohead server of the same version?"
        ) from None
    return doc


def describe(doc: dict[str, Any]) -> str:
    uploads = doc["uploads"]
    if not uploads:
        return f"no uploads of yours to study {doc.get('study')} are known to the server"
    lines: list[str] = []
    for up in uploads:
        files = up.get("files") or []
        head = f"{up.get('upload')}  {up.get('state')}  (received {up.get('received_at')}"
        lines.append(head + (f", {len(files)} files)" if files else ")"))
        if up.get("state") == "quarantined":
            lines.append(f"    reason: {up.get('reason')}")
        for f in files:
            stored = f.get("stored_as")
            if f.get("outcome") == "duplicate":
                lines.append(f"    {f.get('path')}: already stored as {stored} (same content)")
            else:
                lines.append(f"    {f.get('path')}: stored as {stored}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace, prompts: Prompts) -> int:
    settled = settle(args, need_folder=False, need_source=False)
    doc = ask(settled.server, StatusRequest(settled.study), prompts)
    if args.source:
        doc["uploads"] = [u for u in doc["uploads"] if u.get("source") == args.source]
    if args.json:
        print(json.dumps(doc, ensure_ascii=False))
    else:
        print(describe(doc))
    return 0
