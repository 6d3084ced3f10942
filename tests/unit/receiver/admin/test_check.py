"""``dittohead-admin check`` on a temporary tree, and ``init``'s never-loosen rule.

The accounts and the real sshd evaluation need real users and root: see
tests/integration/test_systemd.py. Here the checks that only look at files and settings.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dittohead.receiver.admin.check_cmd import (
    Probe,
    _judge_sshd,
    _parse_sshd,
    check_destinations,
    check_kernel,
    check_layout,
    check_reach,
    check_socket,
    check_units,
)
from dittohead.receiver.admin.init_cmd import InitError, init
from dittohead.receiver.config.model import load_config
from tests.support.server import STUDY, Server, make_server

REPO = Path(__file__).resolve().parents[4]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_fresh_init_passes_the_folder_checks(server: Server) -> None:
    assert check_layout(server.config) == []
    assert check_destinations(server.config) == []
    assert check_reach(server.config) == []


def test_a_loose_inbox_is_named_with_its_fix(server: Server) -> None:
    server.inbox.chmod(0o777)
    [problem] = check_layout(server.config)
    assert problem.where == str(server.inbox)
    assert "0777" in problem.what and problem.fix == f"chmod 3773 {server.inbox}"


def test_a_missing_folder_is_named(server: Server) -> None:
    done = server.config.study_dir(STUDY) / "done"
    done.rmdir()
    [problem] = check_layout(server.config)
    assert problem.where == str(done) and "init" in problem.fix


def test_a_file_where_a_folder_belongs_is_named(server: Server) -> None:
    done = server.config.study_dir(STUDY) / "done"
    done.rmdir()
    done.write_text("")
    [problem] = check_layout(server.config)
    assert problem.where == str(done) and "not a folder" in problem.what


@pytest.mark.parametrize("bad", [0o755, 0o750, 0o2755, 0o2700 & ~0o100])
def test_a_destination_without_setgid_or_open_to_others_is_named(server: Server, bad: int) -> None:
    server.destination.chmod(bad)
    [problem] = check_destinations(server.config)
    assert problem.where == str(server.destination) and "chmod 2750" in problem.fix


def test_a_missing_destination_is_named(server: Server) -> None:
    server.destination.rmdir()
    [problem] = check_destinations(server.config)
    assert "missing" in problem.what


def test_init_keeps_a_stricter_mode_unless_forced(server: Server) -> None:
    study = server.config.study_dir(STUDY)
    study.chmod(0o750)  # stricter than the layout's 0755
    notes = init(server.config)
    assert mode(study) == 0o750
    assert any("kept" in note and str(study) in note for note in notes)
    # ... but check still reports it, and --force puts the layout back
    assert [p.where for p in check_layout(server.config)] == [str(study)]
    init(server.config, force=True)
    assert mode(study) == 0o755
    assert check_layout(server.config) == []


def test_init_tightens_a_looser_mode(server: Server) -> None:
    processing = server.config.study_dir(STUDY) / "processing"
    processing.chmod(0o755)
    init(server.config)
    assert mode(processing) == 0o700


def test_protected_hardlinks_off_is_named(tmp_path: Path) -> None:
    proc = tmp_path / "protected_hardlinks"
    proc.write_text("0\n")
    [problem] = check_kernel(Probe(protected_hardlinks=proc))
    assert problem.where == "fs.protected_hardlinks" and "sysctl" in problem.fix
    proc.write_text("1\n")
    assert check_kernel(Probe(protected_hardlinks=proc)) == []


@pytest.fixture
def bound(server: Server) -> Iterator[Path]:
    path = server.config.socket
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o660)
    try:
        yield path
    finally:
        sock.close()


def test_the_socket_is_checked(server: Server, bound: Path) -> None:
    # The uploaders' group is the caller's primary group, which also owns the socket.
    assert check_socket(server.config) == []
    bound.chmod(0o666)
    [problem] = check_socket(server.config)
    assert problem.where == str(bound) and "SocketMode=0660" in problem.fix


def test_a_missing_socket_is_named(server: Server) -> None:
    [problem] = check_socket(server.config)
    assert "dittohead-processor.socket" in problem.fix


LOCKED = {
    "forcecommand": "/usr/bin/python3 -I -X utf8 -m dittohead.receiver.upload.receive --config /e",
    "disableforwarding": "yes",
    "permittty": "no",
    "permituserrc": "no",
}


def test_sshd_settings_from_the_generated_block_pass() -> None:
    assert _judge_sshd("x", LOCKED) == []


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("forcecommand", "none", "ForceCommand"),
        ("disableforwarding", "no", "forwarding"),
        ("permittty", "yes", "PermitTTY"),
        ("permituserrc", "yes", "PermitUserRC"),
    ],
)
def test_each_loose_sshd_setting_is_named(key: str, value: str, named: str) -> None:
    [problem] = _judge_sshd("x", {**LOCKED, key: value})
    assert named in problem.what and "sshd-config" in problem.fix


def test_forwarding_may_also_be_off_one_by_one() -> None:
    settings = {
        **LOCKED,
        "disableforwarding": "no",
        "x11forwarding": "no",
        "allowtcpforwarding": "no",
        "allowagentforwarding": "no",
        "allowstreamlocalforwarding": "no",
    }
    assert _judge_sshd("x", settings) == []


def test_sshd_t_output_is_parsed_first_value_wins() -> None:
    assert _parse_sshd("PermitTTY no\npermittty yes\nforcecommand a b c\n") == {
        "permittty": "no",
        "forcecommand": "a b c",
    }


def _units(tmp_path: Path, *drop_ins: str) -> Probe:
    """The shipped processor and rescan units in a folder, with drop-ins for both."""
    units = tmp_path / "units"
    units.mkdir()
    for name in ("dittohead-processor.service", "dittohead-rescan.service"):
        (units / name).write_text((REPO / "systemd" / name).read_text())
    folder = units / "dittohead-.service.d"
    folder.mkdir()
    for i, text in enumerate(drop_ins):
        (folder / f"{i:02}.conf").write_text(f"[Service]\n{text}\n")
    return Probe(unit_dirs=(units,))


def test_folders_outside_readwritepaths_are_named(server: Server, tmp_path: Path) -> None:
    probe = _units(tmp_path)
    problems = check_units(server.config, probe)
    # The shipped unit covers /srv/dittohead and /var/lib/dittohead, not this test's tree:
    # one finding per folder, naming both services, and a fix in the unit folder looked at.
    needed = [server.config.dropbox, server.config.state_dir, server.destination]
    assert [p.where for p in problems] == [str(path) for path in needed]
    for problem in problems:
        assert problem.what.startswith(
            "dittohead-processor.service and dittohead-rescan.service may not write here"
        )
        assert f"{probe.unit_dirs[0]}/dittohead-.service.d/destinations.conf" in problem.fix
        assert "/etc/systemd" not in problem.fix


def test_a_drop_in_covering_the_folders_passes(server: Server, tmp_path: Path) -> None:
    probe = _units(tmp_path, f"ReadWritePaths={server.base}")
    assert check_units(server.config, probe) == []


def test_an_empty_readwritepaths_resets_the_list(server: Server, tmp_path: Path) -> None:
    probe = _units(tmp_path, f"ReadWritePaths=-{server.base}", "ReadWritePaths=")
    assert len(check_units(server.config, probe)) == 3


def test_units_that_are_not_installed_are_not_checked(server: Server, tmp_path: Path) -> None:
    assert check_units(server.config, Probe(unit_dirs=(tmp_path,))) == []


def test_init_names_a_missing_parent_and_what_it_already_made(tmp_path: Path) -> None:
    server = make_server(tmp_path / "first")
    doc = yaml.safe_load(server.config_path.read_text())
    doc["dropbox"] = str(tmp_path / "new-dropbox")
    doc["state_dir"] = str(tmp_path / "srv" / "lib" / "dittohead")  # /srv/lib is not there
    server.config_path.write_text(yaml.safe_dump(doc))
    config = load_config(server.config_path)
    with pytest.raises(InitError) as caught:
        init(config)
    message = caught.value.message
    assert message.startswith(
        f"cannot create {tmp_path}/srv/lib/dittohead: the folder {tmp_path}/srv above it "
        f"does not exist; create it (mkdir -p {tmp_path}/srv/lib"
    )
    assert message.endswith(
        f"(already done: created {tmp_path}/new-dropbox (0755); "
        f"created {tmp_path}/new-dropbox/.notices (0700))"
    )
    assert not (tmp_path / "srv").exists()  # nothing made above init's own folders


def test_init_names_a_destinations_missing_parent(server: Server) -> None:
    doc = yaml.safe_load(server.config_path.read_text())
    doc["studies"][STUDY]["destination"] = str(server.base / "nowhere" / "raw")
    server.config_path.write_text(yaml.safe_dump(doc))
    with pytest.raises(InitError, match=r"its parent .*/nowhere does not exist; create it with"):
        init(load_config(server.config_path))


@pytest.mark.parametrize("mode", ["native", "fallback"])
def test_each_folder_using_a_fallback_gets_a_file_system_line_and_the_probe_leaves_nothing(
    server: Server, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dittohead.receiver import fscaps
    from dittohead.receiver.admin.check_cmd import check_filesystems

    if mode == "fallback":
        monkeypatch.setenv(fscaps.FORCE_ENV, "1")
    fscaps.forget()
    before = sorted(p for p in server.base.rglob("*"))
    lines: list[str] = []
    assert check_filesystems(server.config, lines) == []  # locks work on the local fs
    if mode == "native":
        assert lines == []  # every primitive native: the output stays as it always was
    study = server.config.study_dir(STUDY)
    folders = [server.config.dropbox, study / "inbox", study / "processing", server.destination]
    if mode == "fallback":
        assert [line.split(" (")[0] for line in lines] == [f"file system: {f}" for f in folders]
    for line in lines:
        assert "fcntl-locks=work" in line and "acls=work" in line
        for what in fscaps.PRIMITIVES:
            assert f"{what}={mode}" in line
    assert sorted(p for p in server.base.rglob("*")) == before
