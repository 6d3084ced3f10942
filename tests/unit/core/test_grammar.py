"""The SSH command grammar: exact, no shell, clear refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dittohead.core.errors import ProtocolError
from dittohead.core.grammar import UploadRequest, parse_command

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
