"""The checked copy: what ``dittohead-receive`` reads instead of checking the YAML on every
upload. It spares the receiver pydantic and YAML, but is used only when it is current and only
the YAML's owner could have written it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dittohead.core.errors import ConfigError
from dittohead.receiver.config import checked
from dittohead.receiver.config.checked import (
    UploadLimits,
    UploadSettings,
    check_config,
    checked_path,
    load_settings,
)
from dittohead.receiver.config.model import Limits
from tests.unit.receiver.config.test_model import EVERY_KEY, EXPECTED, write

SETTINGS = UploadSettings.from_config(EXPECTED)


def test_the_settings_are_the_receivers_part_of_the_config() -> None:
    assert SETTINGS.dropbox == Path("/srv/dropbox")
    assert SETTINGS.socket == Path("/run/dh/processor.sock")
    assert SETTINGS.uploaders == {"nccam3": ("nccam3-collectors", "ra"), "pilot_2": ("pilots",)}
    assert SETTINGS.limits == UploadLimits(
        max_upload_bytes=2 * 1024**3,
        max_files=5000,
        max_file_bytes=500 * 1000**2,
        max_concurrent_uploads=2,
        stall_timeout=12.5,
        min_free_bytes=4096,
    )


def test_every_limit_but_the_janitors_reaches_the_receiver() -> None:
    # A cap added to Limits must be a decision: enforced by the receiver too, or not.
    receiver = set(UploadLimits.__dataclass_fields__)
    assert receiver == set(Limits.model_fields) - {"stale_after"}


def test_the_stations_reach_the_receiver() -> None:
    # 'sources' is the allowlist of station ids the receiver enforces (issue 23).
    assert SETTINGS.sources == ("brogden-a", "eye-2")
    assert UploadSettings.from_json(json.loads(json.dumps(SETTINGS.to_json()))) == SETTINGS


def test_a_copy_of_an_older_format_is_not_used(tmp_path: Path) -> None:
    path = write(tmp_path / "dittohead.yaml", EVERY_KEY)
    check_config(path)
    copy = checked_path(path)
    doc = json.loads(copy.read_text())
    doc["format"] = "dittohead-upload-settings-1"  # before sources: it would allow any station
    del doc["settings"]["sources"]
    copy.write_text(json.dumps(doc))
    assert checked._use_checked_copy(path, path.read_bytes(), path.stat()) is None
    assert load_settings(path) == SETTINGS


@pytest.mark.parametrize(
    ("known", "source", "refused"),
    [
        ((), "Anything-1", None),  # no sources listed: any valid id
        (("brogden-a",), "brogden-a", None),
        (("brogden-a",), "Brogden-A", "did you mean 'brogden-a'?"),
        (("brogden-a", "eye-2"), "eye-3", "'eye-3' is not one this server knows; send with"),
    ],
)
def test_a_station_is_known_exactly(
    known: tuple[str, ...], source: str, refused: str | None
) -> None:
    words = checked.unknown_source(known, source)
    if refused is None:
        assert words is None
    else:
        assert words is not None and refused in words and "'sources'" in words


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
    assert checked._use_checked_copy(path, path.read_bytes(), path.stat()) == SETTINGS
    assert load_settings(path) == SETTINGS
    # no temporary file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dittohead.yaml", copy.name]


def loads_without_pydantic(path: Path) -> tuple[bool, str]:
    """Load `path` in a fresh interpreter: (was pydantic or yaml imported, the dropbox found)."""
    code = (
        "import sys; from dittohead.receiver.config.checked import load_settings; "
        f"c = load_settings({str(path)!r}); "
        "print('pydantic' in sys.modules, 'yaml' in sys.modules, c.dropbox)"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True" or out[1] == "True", out[2]


def test_a_current_copy_spares_pydantic_and_yaml(tmp_path: Path) -> None:
    path = write(tmp_path / "dittohead.yaml", EVERY_KEY)
    assert loads_without_pydantic(path) == (True, "/srv/dropbox")  # no copy yet
    check_config(path)
    assert loads_without_pydantic(path) == (False, "/srv/dropbox")


def test_without_a_copy_the_yaml_is_checked_with_the_same_words(tmp_path: Path) -> None:
    path = write(tmp_path / "dittohead.yaml", {**EVERY_KEY, "limits": {"max_files": 0}})
    with pytest.raises(
        ConfigError, match=r"dittohead\.yaml: limits\.max_files: must be at least 1"
    ):
        load_settings(path)
    with pytest.raises(ConfigError, match=r"cannot read the configuration .*nothing\.yaml"):
        load_settings(tmp_path / "nothing.yaml")


def test_an_edited_yaml_is_checked_again(tmp_path: Path) -> None:
    path = write(tmp_path / "dittohead.yaml", EVERY_KEY)
    check_config(path)
    write(path, {**EVERY_KEY, "dropbox": "/srv/elsewhere"})
    assert load_settings(path).dropbox == Path("/srv/elsewhere")
    write(path, {**EVERY_KEY, "limits": {"max_files": 0}})
    with pytest.raises(ConfigError, match="max_files"):
        load_settings(path)


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
    doc["settings"]["dropbox"] = "/srv/forged"
    copy.write_text(json.dumps(doc))
    return path, copy


def test_a_copy_from_other_code_or_another_format_is_not_used(tmp_path: Path) -> None:
    path, copy = forged(tmp_path)
    lying = json.loads(copy.read_bytes())
    # Written by the YAML's owner and current: trusted as it stands (that is the trust model).
    assert load_settings(path).dropbox == Path("/srv/forged")
    tamper(copy, code_sha256="0" * 64)
    assert load_settings(path).dropbox == Path("/srv/dropbox")
    tamper(copy, code_sha256=lying["code_sha256"], format="dittohead-upload-settings-0")
    assert load_settings(path).dropbox == Path("/srv/dropbox")
    copy.write_text('{"format": "dittohead-upload-settings-1", "settings": ')
    assert load_settings(path) == SETTINGS
    copy.write_text(json.dumps({**lying, "settings": {"dropbox": "/srv/forged"}}))
    assert load_settings(path) == SETTINGS  # incomplete: checked again, not half-used


def test_a_copy_others_may_write_is_not_used(tmp_path: Path) -> None:
    path, copy = forged(tmp_path)
    for mode in (0o664, 0o646):
        copy.chmod(mode)
        assert load_settings(path).dropbox == Path("/srv/dropbox")
    copy.chmod(0o644)
    assert load_settings(path).dropbox == Path("/srv/forged")
    link = tmp_path / "elsewhere.checked"
    copy.rename(link)
    copy.symlink_to(link)
    assert load_settings(path).dropbox == Path("/srv/dropbox")


@pytest.mark.root
def test_a_copy_of_another_owner_is_not_used_nor_written(tmp_path: Path) -> None:
    path, copy = forged(tmp_path)
    os.chown(copy, 7001, -1)
    assert load_settings(path).dropbox == Path("/srv/dropbox")
    # The copy takes the YAML's group (say, the one whose members may read it).
    copy.unlink()
    os.chown(path, -1, 7002)
    path.chmod(0o640)
    check_config(path)
    assert (copy.stat().st_gid, copy.stat().st_mode & 0o777) == (7002, 0o640)
    assert load_settings(path) == SETTINGS
    # The YAML's owner is someone else: check_config checks but writes no copy.
    copy.unlink()
    os.chown(path, 7001, -1)
    assert check_config(path) == EXPECTED
    assert not copy.exists()
