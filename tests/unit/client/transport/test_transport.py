"""The transport module's records: Server (and the UploadRequest it travels with) are equal,
hashed and shown by their fields."""

from __future__ import annotations

from pathlib import Path

from dittohead.client.transport import DEFAULT_PORT, Server, server_words
from dittohead.core.grammar import UploadRequest


def test_server_defaults_and_value_semantics() -> None:
    server = Server("drop.example.org")
    assert (server.port, server.user, server.identity, server.known_hosts) == (
        DEFAULT_PORT,
        None,
        None,
        None,
    )
    full = Server("h", 2222, "jdoe", "~/key", Path("kh"))
    same = Server(host="h", port=2222, user="jdoe", identity="~/key", known_hosts=Path("kh"))
    assert full == same and hash(full) == hash(same)
    assert full != Server("h", 2222, "jdoe", "~/key", Path("other"))
    assert full != Server("h", 2222, "jdoe", "~/key")
    name: object = "drop.example.org"
    assert server != name
    assert repr(full) == (
        f"Server(host='h', port=2222, user='jdoe', identity='~/key', known_hosts={Path('kh')!r})"
    )


def test_upload_request_value_semantics() -> None:
    request = UploadRequest("nccam3", "brogden-a")
    assert request == UploadRequest(study="nccam3", source="brogden-a")
    assert hash(request) == hash(UploadRequest("nccam3", "brogden-a"))
    assert request != UploadRequest("nccam3", "brogden-b")
    assert request != UploadRequest("brogden-a", "nccam3")
    assert repr(request) == "UploadRequest(study='nccam3', source='brogden-a')"
    assert {request: 1}[UploadRequest("nccam3", "brogden-a")] == 1


def test_server_words_are_the_receivers_lines_without_the_prefix() -> None:
    stderr = b"motd noise\ndittohead: first\n  dittohead: second  \nnot dittohead: third\n"
    assert server_words(stderr) == ["first", "second"]
    assert server_words(b"") == []
