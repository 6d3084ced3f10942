"""``dittohead-admin history``'s text form and filters, on a ledger the processor wrote."""

from __future__ import annotations

import json
import os
import time

import pytest
import yaml

from dittohead.receiver.admin import history_cmd
from dittohead.receiver.admin.cli import main
from dittohead.receiver.config.model import load_config
from dittohead.receiver.processor.finalize import run_once
from dittohead.receiver.processor.ledger import read_ledger
from tests.support.server import STUDY, Server


@pytest.fixture
def ledger(server: Server) -> tuple[Server, list[dict[str, object]]]:
    """Two uploads from two stations, the second resending one file unchanged."""
    doc = yaml.safe_load(server.config_path.read_text())
    doc["sources"]["eye-2"] = "Eyelink room"
    server.config_path.write_text(yaml.safe_dump(doc))
    server = Server(server.base, server.config_path, load_config(server.config_path))
    server.commit({"a.txt": b"one", "b.txt": b"two"})
    run_once(server.config)
    time.sleep(1.1)  # a second apart: the filters by time can tell them apart
    server.commit({"a.txt": b"one", "b.txt": b"two, again"}, source="eye-2")
    run_once(server.config)
    fd = os.open(server.destination, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return server, read_ledger(fd)
    finally:
        os.close(fd)


def history(server: Server, capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    code = main(["history", "--config", str(server.config_path), "--study", STUDY, *argv])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    return out.splitlines()


def test_the_text_form_shows_upload_ids_utc_times_and_explains_its_marks(
    ledger: tuple[Server, list[dict[str, object]]], capsys: pytest.CaptureFixture[str]
) -> None:
    server, records = ledger
    first, second = records[0], records[2]
    assert history(server, capsys) == [
        history_cmd.LEGEND,
        f"upload {first['upload']}  received {str(first['received_at'])[:19]}Z  by "
        f"{first['uploader']}  from brogden-a (Brogden A)",
        "  + a.txt",
        "  + b.txt",
        f"upload {second['upload']}  received {str(second['received_at'])[:19]}Z  by "
        f"{second['uploader']}  from eye-2 (Eyelink room)",
        "  = a.txt",
        "  + b.txt  → b~2.txt",
    ]
    assert "+ stored" in history_cmd.LEGEND and "= duplicate" in history_cmd.LEGEND


def test_each_filter_narrows_the_records(
    ledger: tuple[Server, list[dict[str, object]]], capsys: pytest.CaptureFixture[str]
) -> None:
    server, records = ledger
    first, second = str(records[0]["upload"]), str(records[2]["upload"])

    def uploads(*argv: str) -> list[str]:
        lines = history(server, capsys, "--json", *argv)
        return sorted({json.loads(line)["upload"] for line in lines})

    assert uploads("--upload", second) == [second]
    assert uploads("--source", "brogden-a") == [first]
    assert uploads("--source", "Brogden-A") == []  # ids are exact
    assert uploads("--user", str(records[0]["uploader"])) == sorted([first, second])
    assert uploads("--user", "nobody-at-all") == []
    since = str(records[2]["received_at"])[:19]
    assert uploads("--since", since) == [second]
    assert uploads("--until", str(records[0]["received_at"])) == [first]
    day = since[:10]
    assert uploads("--since", day, "--until", day) == sorted([first, second])
    assert history(server, capsys, "--upload", "nope") == ["no records match these filters"]


def test_a_date_that_is_not_one_is_a_usage_error(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["history", "--config", str(server.config_path), "--study", STUDY, "--since", "May"])
    assert caught.value.code == 2
    assert "'May' is not a date such as 2026-03-01" in capsys.readouterr().err
