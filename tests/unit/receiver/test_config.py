"""The YAML configuration: checked in full, one line per problem naming file and field; and its
checked copy, which spares the receiver pydantic on every upload but is used only when it is
current and only its YAML's owner could have written it."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dittohead.core.errors import ConfigError
from dittohead.receiver import config as cfg
from dittohead.receiver.config import (
    Config,
    Limits,
    ProcessorSettings,
    Study,
    check_config,
    checked_path,
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
        ({"dropbox": "srv"}, "t.yaml: dropbox: Value error, must be an absolute path"),
        ({"limits": {"max_files": 0}}, "t.yaml: limits.max_files: Input should be greater than"),
        ({"limits": {"stall_timeout": 0}}, "t.yaml: limits.stall_timeout: Input should be greater"),
        ({"limits": {"max_upload_bytes": "12 parsecs"}}, "'12 parsecs' is not a size such as"),
        ({"limits": {"min_free_bytes": -1}}, "t.yaml: limits.min_free_bytes: Input should be"),
        (
            {"limits": {"stall_timeout": 600, "stale_after": 900}},
            "t.yaml: limits: Value error, stale_after must be more than twice stall_timeout",
        ),
        (
            {"studies": {"Bad Name": {"destination": "/d", "uploaders": ["g"]}}},
            "t.yaml: studies: Value error, 'Bad Name' is not a valid study name",
        ),
        ({"sources": {"no way": "x"}}, "'no way' is not a valid station id"),
        (
            {"studies": {"s": {"destination": "/d", "uploaders": []}}},
            "t.yaml: studies.s.uploaders: Tuple should have at least 1 item",
        ),
        (
            {"studies": {"s": {"destination": "d", "uploaders": ["g"]}}},
            "t.yaml: studies.s.destination: Value error, must be an absolute path",
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


# --- the checked copy -------------------------------------------------------------------------


def test_check_writes_a_copy_that_loads_the_same(tmp_path: Path) -> None:
    path = write(tmp_path / "dittohead.yaml", EVERY_KEY)
    assert check_config(path) == EXPECTED
    copy = checked_path(path)
    assert copy == tmp_path / "dittohead.yaml.checked"
    assert copy.stat().st_mode & 0o777 == 0o644
    # As readable as the YAML, no more: an admin who closed it to others closes the copy too.
    path.chmod(0o640)
    check_config(path)
    assert copy.stat().st_mode & 0o777 == 0o640
    assert copy.stat().st_gid == path.stat().st_gid
    path.chmod(0o644)
    assert cfg._use_checked_copy(path, path.read_bytes(), path.stat()) == EXPECTED
    assert load_config(path) == EXPECTED
    # no temporary file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dittohead.yaml", copy.name]


def loads_without_pydantic(path: Path) -> tuple[bool, str]:
    """Load `path` in a fresh interpreter: (was pydantic imported, the dropbox it found)."""
    code = (
        "import sys; from dittohead.receiver.config import load_config; "
        f"c = load_config({str(path)!r}); "
        "print('pydantic' in sys.modules, 'yaml' in sys.modules, c.dropbox)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True" or out[1] == "True", out[2]


def test_a_current_copy_spares_pydantic_and_yaml(tmp_path: Path) -> None:
    path = write(tmp_path / "dittohead.yaml", EVERY_KEY)
    assert loads_without_pydantic(path) == (True, "/srv/dropbox")  # no copy yet
    check_config(path)
    assert loads_without_pydantic(path) == (False, "/srv/dropbox")


def test_a_current_copy_loads_without_dataclasses_or_typing(tmp_path: Path) -> None:
    # The receiver loads its configuration on every upload: these cost its start ~6 ms.
    path = write(tmp_path / "dittohead.yaml", EVERY_KEY)
    check_config(path)
    code = (
        "import sys; from dittohead.receiver.config import load_config; "
        f"c = load_config({str(path)!r}); "
        "print(sorted(m for m in ('dataclasses', 'inspect', 'typing') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("cls", [Config, Study, Limits, ProcessorSettings])
def test_each_field_is_checked_and_in_the_order_of_its_class(cls: type[Any]) -> None:
    # pydantic's view of a class is made from its _SCHEMA, _FIELDS and __init__: a field
    # missing from one of them would go unchecked, or make every check fail.
    parameters = list(inspect.signature(cls.__init__).parameters)[1:]
    assert list(cls._FIELDS) == parameters == list(cls._SCHEMA)
    checked = cfg._checked_class(cls)
    assert [f.name for f in dataclasses.fields(checked)] == parameters


def test_an_edited_yaml_is_checked_again(tmp_path: Path) -> None:
    path = write(tmp_path / "dittohead.yaml", EVERY_KEY)
    check_config(path)
    write(path, {**EVERY_KEY, "dropbox": "/srv/elsewhere"})
    assert load_config(path).dropbox == Path("/srv/elsewhere")
    write(path, {**EVERY_KEY, "limits": {"max_files": 0}})
    with pytest.raises(ConfigError, match="max_files"):
        load_config(path)


def tamper(copy: Path, **changes: Any) -> None:
    doc = json.loads(copy.read_bytes())
    doc.update(changes)
    copy.write_text(json.dumps(doc))


def forged(tmp_path: Path) -> tuple[Path, Path]:
    """(the YAML, its checked copy), the copy current but naming another dropbox: which of the
    two a load returns shows whether the copy was used."""
    path = write(tmp_path / "dittohead.yaml", EVERY_KEY)
    check_config(path)
    copy = checked_path(path)
    doc = json.loads(copy.read_bytes())
    doc["config"]["dropbox"] = "/srv/forged"
    copy.write_text(json.dumps(doc))
    return path, copy


def test_a_copy_from_other_code_or_another_format_is_not_used(tmp_path: Path) -> None:
    path, copy = forged(tmp_path)
    lying = json.loads(copy.read_bytes())
    # Written by the YAML's owner and current: trusted as it stands (that is the trust model).
    assert load_config(path).dropbox == Path("/srv/forged")
    tamper(copy, module_sha256="0" * 64)
    assert load_config(path).dropbox == Path("/srv/dropbox")
    tamper(copy, module_sha256=lying["module_sha256"], format="dittohead-config-checked-0")
    assert load_config(path).dropbox == Path("/srv/dropbox")
    copy.write_text('{"format": "dittohead-config-checked-1", "config": ')
    assert load_config(path) == EXPECTED
    copy.write_text(json.dumps({**lying, "config": {"dropbox": "/srv/forged"}}))
    assert load_config(path) == EXPECTED  # incomplete: checked again, not half-used


def test_a_copy_others_may_write_is_not_used(tmp_path: Path) -> None:
    path, copy = forged(tmp_path)
    for mode in (0o664, 0o646):
        copy.chmod(mode)
        assert load_config(path).dropbox == Path("/srv/dropbox")
    copy.chmod(0o644)
    assert load_config(path).dropbox == Path("/srv/forged")
    link = tmp_path / "elsewhere.checked"
    copy.rename(link)
    copy.symlink_to(link)
    assert load_config(path).dropbox == Path("/srv/dropbox")


def test_a_copy_of_another_owner_is_not_used_nor_written(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the files to another uid")
    path, copy = forged(tmp_path)
    os.chown(copy, 7001, -1)
    assert load_config(path).dropbox == Path("/srv/dropbox")
    # The copy takes the YAML's group (say, the one whose members may read it).
    copy.unlink()
    os.chown(path, -1, 7002)
    path.chmod(0o640)
    check_config(path)
    assert (copy.stat().st_gid, copy.stat().st_mode & 0o777) == (7002, 0o640)
    assert load_config(path) == EXPECTED
    # The YAML's owner is someone else: check_config checks but writes no copy.
    copy.unlink()
    os.chown(path, 7001, -1)
    assert check_config(path) == EXPECTED
    assert not copy.exists()
