"""The YAML configuration: checked in full, one line per problem naming file and field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from dittohead.core.errors import ConfigError
from dittohead.receiver.config import model as cfg
from dittohead.receiver.config.model import (
    Config,
    Limits,
    ProcessorSettings,
    Study,
    load_config,
)

#: every key set to something other than its default, so a field the checked copy dropped or
#: mangled shows as a difference
EVERY_KEY: dict[str, Any] = {
    "dropbox": "/srv/dropbox",
    "socket": "/run/dh/processor.sock",
    "state_dir": "/var/lib/dh",
    "user": "dhsvc",
    "sources": {"brogden-a": "Brogden A", "eye-2": "Eyelink room"},
    "studies": {
        "nccam3": {
            "destination": "/data/nccam3/raw",
            "uploaders": ["nccam3-collectors", "ra"],
            "notify": ["pi@example.org"],
        },
        "pilot_2": {"destination": "/data/pilot", "uploaders": ["pilots"]},
    },
    "limits": {
        "max_upload_bytes": "2 GiB",
        "max_files": 5000,
        "max_file_bytes": "500MB",
        "max_concurrent_uploads": 2,
        "stall_timeout": 12.5,
        "min_free_bytes": 4096,
        "stale_after": 3600,
    },
    "processor": {"idle_timeout": 7.25},
}

EXPECTED = Config(
    dropbox=Path("/srv/dropbox"),
    socket=Path("/run/dh/processor.sock"),
    state_dir=Path("/var/lib/dh"),
    user="dhsvc",
    sources={"brogden-a": "Brogden A", "eye-2": "Eyelink room"},
    studies={
        "nccam3": Study(
            destination=Path("/data/nccam3/raw"),
            uploaders=("nccam3-collectors", "ra"),
            notify=("pi@example.org",),
        ),
        "pilot_2": Study(destination=Path("/data/pilot"), uploaders=("pilots",)),
    },
    limits=Limits(
        max_upload_bytes=2 * 1024**3,
        max_files=5000,
        max_file_bytes=500 * 1000**2,
        max_concurrent_uploads=2,
        stall_timeout=12.5,
        min_free_bytes=4096,
        stale_after=3600.0,
    ),
    processor=ProcessorSettings(idle_timeout=7.25),
)


def write(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def refused(tmp_path: Path, doc: Any) -> str:
    path = write(tmp_path / "dittohead.yaml", doc)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_every_key_is_read() -> None:
    assert cfg.parse_config(EVERY_KEY, "t.yaml") == EXPECTED


def test_defaults() -> None:
    config = cfg.parse_config({"dropbox": "/srv/d"}, "t.yaml")
    assert config == Config(dropbox=Path("/srv/d"))
    assert config.limits == Limits() and config.limits.max_files == 1_000_000
    assert config.socket == Path("/run/dittohead/processor.sock")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"uploaderz": 1}, "t.yaml: uploaderz: unknown key"),
        ({"limits": {"max_file": 1}}, "t.yaml: limits.max_file: unknown key"),
        ({"dropbox": None}, "t.yaml: dropbox: "),
        ({"dropbox": "srv"}, "t.yaml: dropbox: must be an absolute path"),
        ({"limits": {"max_files": 0}}, "t.yaml: limits.max_files: must be at least 1 (it is 0)"),
        (
            {"limits": {"stall_timeout": 0}},
            "t.yaml: limits.stall_timeout: must be more than 0 (it is 0)",
        ),
        ({"limits": {"max_upload_bytes": "12 parsecs"}}, "'12 parsecs' is not a size such as"),
        (
            {"limits": {"min_free_bytes": -1}},
            "t.yaml: limits.min_free_bytes: must be at least 0 (it is -1)",
        ),
        (
            {"limits": {"stall_timeout": 600, "stale_after": 900}},
            "t.yaml: limits: stale_after must be more than twice stall_timeout",
        ),
        (
            {"studies": {"Bad Name": {"destination": "/d", "uploaders": ["g"]}}},
            "t.yaml: studies: 'Bad Name' is not a valid study name",
        ),
        (
            {"limits": {"max_concurrent_uploads": 1}},
            "t.yaml: limits: max_concurrent_uploads must be at least 2: a send of several "
            "parts holds two uploads at once (it is 1)",
        ),
        ({"sources": {"no way": "x"}}, "'no way' is not a valid station id"),
        (
            {"studies": {"s": {"destination": "/d", "uploaders": []}}},
            "t.yaml: studies.s.uploaders: must list at least 1",
        ),
        (
            {"studies": {"s": {"destination": "d", "uploaders": ["g"]}}},
            "t.yaml: studies.s.destination: must be an absolute path",
        ),
        ({"studies": {"s": {"uploaders": ["g"]}}}, "studies.s.destination: required, but not"),
    ],
)
def test_each_problem_names_file_and_field(change: dict[str, Any], words: str) -> None:
    doc = {"dropbox": "/srv/d", **change}
    with pytest.raises(ConfigError) as info:
        cfg.parse_config(doc, "t.yaml")
    assert words in str(info.value)
    assert "\n" not in str(info.value)
    # The admin's words, not pydantic's.
    for theirs in ("Value error", "Input should", "Tuple should", "validation error"):
        assert theirs not in str(info.value)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"limits": {"stall_timeout": "soon"}}, "limits.stall_timeout: must be a number"),
        ({"user": ["a"]}, "t.yaml: user: must be text"),
        ({"studies": ["s"]}, "t.yaml: studies: must be a mapping of keys to values"),
        ({"dropbox": 3}, "t.yaml: dropbox: must be a path such as /srv/dittohead"),
    ],
)
def test_wrong_kinds_of_value_are_named_in_plain_words(change: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        cfg.parse_config({"dropbox": "/srv/d", **change}, "t.yaml")


def test_missing_dropbox_and_unknown_key_are_both_named() -> None:
    with pytest.raises(ConfigError) as info:
        cfg.parse_config({"dropboks": "/srv"}, "t.yaml")
    assert str(info.value) == (
        "t.yaml: dropbox: required, but not given; t.yaml: dropboks: unknown key"
    )


def test_not_yaml_empty_and_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "dittohead.yaml"
    path.write_text("dropbox: [unclosed\n")
    with pytest.raises(ConfigError, match=r"dittohead\.yaml: line 2: not valid YAML"):
        load_config(path)
    path.write_text("")
    with pytest.raises(ConfigError, match="the file is empty"):
        load_config(path)
    path.write_bytes(b"dropbox: /srv/\xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)
    assert "a mapping" in refused(tmp_path, ["dropbox"])
    with pytest.raises(ConfigError, match=r"cannot read the configuration .*nothing\.yaml"):
        load_config(tmp_path / "nothing.yaml")


def test_a_config_is_frozen() -> None:
    config = cfg.parse_config(EVERY_KEY, "t.yaml")
    with pytest.raises(ValidationError, match="frozen"):
        config.dropbox = Path("/elsewhere")  # type: ignore[misc]
