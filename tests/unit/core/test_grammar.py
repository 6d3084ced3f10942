"""The SSH command grammar: exact, no shell, clear refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dittohead.core.errors import ProtocolError
from dittohead.core.grammar import StatusRequest, UploadRequest, parse_command, parse_request

studies = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True)
sources = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)


@given(studies, sources)
def test_every_valid_request_round_trips(study: str, source: str) -> None:
    request = UploadRequest(study, source)
    assert parse_command(request.command()) == request


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (None, "no command was given"),
        ("", "no command was given"),
        ("   ", "no command was given"),
        ("internal-sftp", "use 'dittohead send'"),
        ("/usr/lib/openssh/sftp-server", "use 'dittohead send'"),
        ("scp -t /tmp", "use 'dittohead send'"),
        ("rsync --server -e.LsfxC . /tmp", "use 'dittohead send'"),
        ("bash", "use 'dittohead send'"),
        ("dittohead upload v2 nccam3 brogden-a", "protocol version v2 is not supported"),
        ("dittohead upload v1  nccam3 brogden-a", "malformed upload request"),
        ("dittohead upload v1 nccam3 brogden-a ", "malformed upload request"),
        ("dittohead upload v1 nccam3 brogden-a;id", "malformed upload request"),
        ("dittohead upload v1 $(id) brogden-a", "malformed upload request"),
        ("dittohead upload v1 NCCAM3 brogden-a", "malformed upload request"),
        ("dittohead upload v1 nccam3 ../etc", "malformed upload request"),
        ("dittohead upload v1 nccam3", "malformed upload request"),
    ],
)
def test_anything_else_is_refused_with_words(command: str | None, words: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_command(command)
    assert words in info.value.message
    assert "\n" not in info.value.line()


# -- the status verb ----------------------------------------------------------------------------


@given(study=studies)
def test_every_valid_status_request_round_trips(study: str) -> None:
    request = StatusRequest(study)
    assert parse_request(request.command()) == request


@given(study=studies, source=sources)
def test_parse_request_still_parses_uploads(study: str, source: str) -> None:
    request = UploadRequest(study, source)
    assert parse_request(request.command()) == request


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("dittohead status v1", "malformed status request"),
        ("dittohead status v1 ", "malformed status request"),
        ("dittohead status v1  nccam3", "malformed status request"),
        ("dittohead status v1 nccam3 ", "malformed status request"),
        ("dittohead status v1 nccam3 alice", "malformed status request"),  # no user on the wire
        ("dittohead status v1 NCCAM3", "malformed status request"),
        ("dittohead status v1 ../x", "malformed status request"),
        ("dittohead status v1 nccam3;id", "malformed status request"),
        ("dittohead status v1 nccam3\n", "malformed status request"),
        ("dittohead status v1 nccam3\x00", "malformed status request"),
        ("dittohead status v1 " + "a" * 33, "malformed status request"),
        ("dittohead status v2 nccam3", "protocol version v2 is not supported"),
        ("dittohead status v9 nccam3 x", "protocol version v9 is not supported"),
        ("dittohead statusv1 nccam3", "malformed status request"),
        ("dittohead  status v1 nccam3", "dittohead client"),
        (" dittohead status v1 nccam3", "dittohead client"),
    ],
)
def test_hostile_status_requests_are_refused_with_words(command: str, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        parse_request(command)
