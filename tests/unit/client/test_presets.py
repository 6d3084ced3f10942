"""client.toml: lookup order, per-user over machine-wide, one clear line per mistake, and the
send/presets commands driven by a preset (dry runs: nothing connects)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dittohead.client import presets
from dittohead.client.cli import main
from dittohead.core.errors import ConfigError
from tests.unit.client import test_cli
from tests.unit.client.conftest import pin

no_network = test_cli.no_network  # the fixture that fails any connection

GOOD = """
[server]
host = "drop.example.org"
port = 2222
known_hosts = "known_hosts"
station = "brogden-a"

[[preset]]
name = "nccam3"
study = "nccam3"
folder = "{folder}"
things = ["eprime"]
"""


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine-wide file (the real /etc path is swapped for one in tmp_path)."""
    folder = tmp_path / "data"
    (folder / "eprime").mkdir(parents=True)
    (folder / "eprime" / "a.txt").write_text("a")
    (folder / "biopac").mkdir()
    (folder / "biopac" / "b.acq").write_text("b")
    path = tmp_path / "etc" / "client.toml"
    path.parent.mkdir()
    path.write_text(GOOD.format(folder=folder))
    monkeypatch.setattr(presets, "machine_file", lambda: str(path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv(presets.ENV_VAR, raising=False)
    return path


def user_path(tmp_path: Path) -> Path:
    return tmp_path / "cfg" / "dittohead" / "client.toml"


def test_machine_file_alone(machine: Path) -> None:
    config = presets.load()
    assert config.files == (str(machine),)
    assert config.server.host == "drop.example.org" and config.server.port == 2222
    # relative paths are beside the file that names them
    assert config.server.known_hosts == str(machine.parent / "known_hosts")
    [preset] = config.presets
    assert (preset.name, preset.study, preset.things) == ("nccam3", "nccam3", ("eprime",))


def test_the_per_user_file_wins_key_by_key(machine: Path, tmp_path: Path) -> None:
    mine = user_path(tmp_path)
    mine.parent.mkdir(parents=True)
    mine.write_text('[server]\nport = 22\n\n[[preset]]\nname = "nccam3"\nuser = "jdoe"\n')
    config = presets.load()
    assert config.server.host == "drop.example.org" and config.server.port == 22
    preset = config.preset("nccam3")
    assert (preset.user, preset.study) == ("jdoe", "nccam3")


def test_config_option_and_environment_are_read_alone(
    machine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other.toml"
    other.write_text('[server]\nhost = "elsewhere"\n')
    monkeypatch.setenv(presets.ENV_VAR, str(other))
    assert presets.load().server.host == "elsewhere"
    assert presets.load().presets == ()
    assert presets.load(str(machine)).server.host == "drop.example.org"  # --config wins
    with pytest.raises(ConfigError, match="does not exist"):
        presets.load(str(tmp_path / "nope.toml"))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[server]\nhots = "x"\n', r"\[server\] unknown key 'hots'"),
        ('colour = "blue"\n', "unknown key 'colour'"),
        (
            '[[preset]]\nname = "a"\nstudy = "a"\nfolder = "/"\nthing = ["x"]\n',
            "preset 'a': unknown key 'thing'",
        ),
        ('[[preset]]\nname = "a"\nfolder = "/"\n', "preset 'a' has no 'study'"),
        (
            '[[preset]]\nname = "a"\nstudy = "a"\n[[preset]]\nname = "a"\nstudy = "b"\n',
            "'a' is given twice \\(key 'name'\\)",
        ),
        ('[[preset]]\nstudy = "a"\n', "preset number 1 has no 'name'"),
        ('[[preset]]\nname = "a"\nstudy = "NOT OK"\n', "preset 'a': 'study'"),
        ("[server]\nport = 0\n", "'port' must be a number"),
        ('[server]\nport = "22"\n', "'port' must be a number"),
        ('[server]\nstation = "-x"\n', "'station'"),
        ("[server]\nhost = 5\n", "'host' must be a non-empty text"),
        ('[[preset]]\nname = "a"\nstudy = "a"\nthings = "eprime"\n', "'things' must be a list"),
        ('[[preset]]\nname = "a/b"\nstudy = "a"\n', "name 'a/b' is not allowed"),
        ("[server\n", "is not valid TOML"),
        ('server = "x"\n', "'server' must be a \\[server\\] table"),
        ('preset = "x"\n', "'preset' must be a list"),
    ],
)
def test_each_mistake_is_one_line_naming_the_file_and_key(
    tmp_path: Path, text: str, words: str
) -> None:
    path = tmp_path / "client.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words) as info:
        presets.load(str(path))
    assert info.value.message.startswith(f"{path}: ")
    assert "\n" not in info.value.line()


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_bytes(b'[server]\nhost = "\xff"\n')
    with pytest.raises(ConfigError, match="is not UTF-8"):
        presets.load(str(path))


@given(st.binary(max_size=300))
def test_any_bytes_give_a_config_or_a_config_error(data: bytes) -> None:
    try:
        presets.parse(data, "/x/client.toml")
    except ConfigError as exc:
        assert exc.message.startswith("/x/client.toml: ")


@given(st.text(max_size=80))
def test_written_texts_read_back(value: str) -> None:
    doc = {"preset": [{"name": "a", "user": value}]}
    import tomllib

    assert tomllib.loads(presets.dumps(doc)) == doc


def test_a_missing_folder_names_the_file_and_key(machine: Path, tmp_path: Path) -> None:
    machine.write_text(GOOD.format(folder=tmp_path / "gone"))
    preset = presets.load().preset("nccam3")  # listing is fine
    with pytest.raises(
        ConfigError, match=r"client.toml: preset 'nccam3': its 'folder' .* does not exist"
    ):
        preset.checked_folder()


def test_remember_login_keeps_the_rest(machine: Path, tmp_path: Path) -> None:
    mine = user_path(tmp_path)
    assert presets.remember_login(str(mine), "nccam3", "jdoe")
    assert not presets.remember_login(str(mine), "nccam3", "jdoe")
    assert presets.load().preset("nccam3").user == "jdoe"
    assert "password" not in mine.read_text()
    assert presets.remember_login(str(mine), "nccam3", "j.doe")
    assert presets.load().preset("nccam3").user == "j.doe"


def test_send_a_preset_dry_run(
    machine: Path, no_network: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["send", "--preset", "nccam3", "--dry-run", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["files"] == ["eprime/a.txt"]  # the preset's things only
    # the command line wins: another thing
    assert (
        main(
            [
                "send",
                "--preset",
                "nccam3",
                "--dry-run",
                "--json",
                "--study",
                "other",
                str(machine.parent.parent / "data"),
                "biopac",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["files"] == ["biopac/b.acq"]
    assert no_network == []


def test_send_an_unknown_preset(
    machine: Path, no_network: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["send", "--preset", "nope", "--dry-run"]) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("dittohead: there is no preset 'nope'") and err.count("\n") == 1


def test_presets_command(machine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    assert capsys.readouterr().out.startswith("nccam3: study nccam3, ")
    assert main(["presets", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["server"]["station"] == "brogden-a"
    assert [(p["name"], p["folder_exists"]) for p in doc["presets"]] == [("nccam3", True)]


def test_a_bad_file_fails_the_presets_command_in_one_line(
    machine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    machine.write_text('[server]\nhots = "x"\n')
    assert main(["presets"]) == ConfigError.exit_code
    err = capsys.readouterr().err
    known = "host, known_hosts, port, station"
    assert err == f"dittohead: {machine}: [server] unknown key 'hots'; the known keys are {known}\n"


def test_a_preset_send_remembers_the_login_given_with_user(
    key_server: Any, identity: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "data"
    (folder / "eprime").mkdir(parents=True)
    (folder / "eprime" / "a.txt").write_text("a")
    known = pin(key_server, tmp_path)
    mine = Path(presets.user_file())
    mine.parent.mkdir(parents=True)
    mine.write_text(
        f'[server]\nhost = "{key_server.host}"\nport = {key_server.port}\n'
        f'known_hosts = "{known}"\nstation = "brogden-a"\n\n'
        f'[[preset]]\nname = "p"\nstudy = "nccam3"\nfolder = "{folder}"\n'
        f'identity = "{identity}"\n'
    )
    assert main(["send", "--preset", "p", "--user", "alice", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["files"], doc["study"], doc["source"]) == (1, "nccam3", "brogden-a")
    assert presets.load().preset("p").user == "alice"
    assert "password" not in mine.read_text()


def test_save_preset_adds_replaces_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('[server]\nhost = "drop"\n\n[[preset]]\nname = "a"\nstudy = "s1"\n')
    presets.save_preset(str(path), {"name": "b", "study": "s2", "things": ("eprime",)})
    presets.save_preset(
        str(path), {"name": "a2", "study": "s3", "user": "", "folder": None}, replacing="a"
    )
    content = presets.read_file(str(path))
    assert content is not None
    assert content.server.host == "drop"
    assert [(p.name, p.study, p.things, p.user) for p in content.presets] == [
        ("a2", "s3", (), None),
        ("b", "s2", ("eprime",), None),
    ]


def test_save_preset_checks_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('[[preset]]\nname = "a"\nstudy = "s1"\n')
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="'study'"):
        presets.save_preset(str(path), {"name": "a", "study": "../etc"})
    assert path.read_bytes() == before
