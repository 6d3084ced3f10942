"""The window's error dialogs: each kind of failure a collector meets gets its own title
(tests/integration/test_gui.py sees them on a real X server; a full server disk cannot be
made there, so the titles are checked here for every kind)."""

from __future__ import annotations

import pytest

pytest.importorskip("tkinter", reason="this Python has no tkinter (Debian: python3-tk)")

from dittohead.client.gui.dialogs import headline
from dittohead.client.gui.worker import Cancelled
from dittohead.client.plan.batches import PartlySent
from dittohead.client.plan.scan import NamesRejected
from dittohead.core.errors import (
    HostKeyError,
    NotAuthorized,
    OutOfSpace,
    ServerError,
    TransferError,
    UploadRejected,
)


@pytest.mark.parametrize(
    ("error", "title"),
    [
        (TransferError("no answer from drop on port 22: check your network"), "server unreachable"),
        (TransferError("the server drop refused the connection on port 2"), "server unreachable"),
        (TransferError("could not log in to drop as jdoe: wrong password"), "could not log in"),
        (NotAuthorized("you (jdoe) are not an uploader for study 'x'"), "not allowed"),
        (OutOfSpace("the server has no room for this upload"), "server disk full"),
        (UploadRejected("'a/CON.txt' is not an allowed name"), "file refused"),
        (NamesRejected([("a:b", "it contains ':'")]), "file refused"),
        (HostKeyError("the server's identity changed"), "server not trusted"),
        (ServerError("the server failed"), "the server failed"),
    ],
)
def test_each_failure_has_its_title(error: Exception, title: str) -> None:
    assert headline(error) == title


def test_a_partly_sent_send_is_titled_by_what_stopped_it() -> None:
    try:
        try:
            raise OutOfSpace("no room")
        except OutOfSpace as exc:
            raise PartlySent("no room; 1 of 2 parts were stored", 73) from exc
    except PartlySent as partly:
        assert headline(partly) == "server disk full"


def test_cancel_is_not_an_error_the_window_titles() -> None:
    assert Cancelled().exit_code == 130
