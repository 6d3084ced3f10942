"""The gate in-process: arguments, the command, the study, authorization, slots, the inbox."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from dittohead.core.errors import (
    ConfigError,
    LimitExceeded,
    NotAuthorized,
    OutOfSpace,
    ProtocolError,
    ServerError,
    UploadRejected,
    UsageError,
)
from dittohead.core.grammar import StatusRequest, UploadRequest
from dittohead.receiver import accounts
from dittohead.receiver.config import DEFAULT_CONFIG
from dittohead.receiver.config.checked import UploadSettings
from dittohead.receiver.config.model import parse_config
from dittohead.receiver.upload import gate
from tests.support.server import upload_limits

CONFIG = parse_config(
    {
        "dropbox": "/nonexistent/dropbox",
        "studies": {
            "nccam3": {"destination": "/study/nccam3", "uploaders": ["collectors", "lab"]},
        },
    },
    "test.yaml",
)
SETTINGS = UploadSettings.from_config(CONFIG)


def test_arguments() -> None:
    assert gate.parse_args([]) == gate.Options(DEFAULT_CONFIG, False)
    assert gate.parse_args(["--config", "/x.yaml", "-v"]) == gate.Options(Path("/x.yaml"), True)
    with pytest.raises(UsageError, match=r"unrecognized arguments: --bogus.*usage: dittohead-"):
        gate.parse_args(["--bogus"])


def test_the_command_comes_from_ssh_original_command_as_utf8() -> None:
    env = {b"SSH_ORIGINAL_COMMAND": b"dittohead upload v1 nccam3 brogden-a"}
    assert gate.request_from_env(env) == UploadRequest("nccam3", "brogden-a")
    status = {b"SSH_ORIGINAL_COMMAND": b"dittohead status v1 nccam3"}
    assert gate.request_from_env(status) == StatusRequest("nccam3")
    with pytest.raises(ProtocolError, match="no command was given"):
        gate.request_from_env({})
    with pytest.raises(ProtocolError, match="dittohead client"):
        gate.request_from_env({b"SSH_ORIGINAL_COMMAND": b"dittohead upload v1 nccam3 \xff"})


def test_unknown_study_is_named() -> None:
    assert gate.find_uploaders(SETTINGS, "nccam3") == ("collectors", "lab")
    with pytest.raises(UploadRejected, match="no study 'other' on this server; check the study"):
        gate.find_uploaders(SETTINGS, "other")


def test_authorization_needs_one_uploader_group() -> None:
    uploaders = SETTINGS.uploaders["nccam3"]
    gate.authorize("nccam3", uploaders, "alice", {"users", "lab"})
    with pytest.raises(NotAuthorized) as info:
        gate.authorize("nccam3", uploaders, "alice", {"users", "nccam3"})
    assert info.value.message == (
        "you (alice) are not an uploader for study 'nccam3'; ask the server's admin to add you "
        "to one of its uploader groups (collectors, lab)"
    )
    assert info.value.exit_code == 77


def test_group_names_come_from_the_kernel_ids() -> None:
    assert accounts.group_names([0, 2**31 - 7]) == {"root"}  # an unnamed gid is skipped
    assert accounts.group_names([os.getgid()]) <= gate.process_groups()


def _runtime(tmp_path: Path, mode: int = 0o700) -> Path:
    base = tmp_path / "run-user"
    (base / str(os.getuid())).mkdir(parents=True)
    os.chmod(base / str(os.getuid()), mode)
    return base


def test_upload_slots_limit_concurrent_uploads(tmp_path: Path) -> None:
    base = _runtime(tmp_path)
    held = [gate.claim_slot(os.getuid(), 2, base) for _ in range(2)]
    assert all(fd is not None for fd in held)
    with pytest.raises(LimitExceeded, match="already have 2 uploads running"):
        gate.claim_slot(os.getuid(), 2, base)
    fd = held.pop()
    assert fd is not None
    os.close(fd)  # one upload finished: its slot is free again
    again = gate.claim_slot(os.getuid(), 2, base)
    assert again is not None
    for fd in [*held, again]:
        assert fd is not None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def test_upload_slots_need_a_private_runtime_folder(tmp_path: Path) -> None:
    assert gate.claim_slot(os.getuid(), 1, tmp_path / "missing") is None
    shared = _runtime(tmp_path, 0o777)
    assert gate.claim_slot(os.getuid(), 1, shared) is None
    assert list((shared / str(os.getuid())).iterdir()) == []


def test_missing_inbox_is_a_server_problem() -> None:
    with pytest.raises(ServerError, match=r"inbox /nonexistent/dropbox/nccam3/inbox cannot be"):
        gate.open_inbox(SETTINGS, "nccam3")


def test_free_space_reserve(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        gate.check_space(fd, upload_limits(min_free_bytes=0))
        with pytest.raises(OutOfSpace, match="out of space; nothing was stored"):
            gate.check_space(fd, upload_limits(min_free_bytes=1 << 62))
    finally:
        os.close(fd)


def test_admit_runs_every_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Resource limits are per process: keep them off the test runner.
    monkeypatch.setattr(gate, "set_resource_limits", lambda limits: None)
    monkeypatch.setattr(gate, "RUNTIME_BASE", tmp_path / "no-runtime")
    inbox = tmp_path / "dropbox" / "s1" / "inbox"
    inbox.mkdir(parents=True)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"dropbox: {tmp_path / 'dropbox'}\nstudies:\n  s1:\n    destination: /d\n"
        f"    uploaders: [{accounts.group_names([os.getgid()]).pop()}]\nlimits:\n"
        "  min_free_bytes: 0\n",
        encoding="utf-8",
    )
    options = gate.Options(config, False)
    admission = gate.admit(options, {b"SSH_ORIGINAL_COMMAND": b"dittohead upload v1 s1 pc-1"})
    try:
        assert admission.user == accounts.user_name(os.getuid())
        assert (admission.request.study, admission.request.source) == ("s1", "pc-1")
        assert os.path.samestat(os.fstat(admission.inbox_fd), inbox.stat())
    finally:
        os.close(admission.inbox_fd)
    with pytest.raises(ProtocolError):  # the grammar is checked before the config is read
        gate.admit(gate.Options(tmp_path / "missing.yaml", False), {b"SSH_ORIGINAL_COMMAND": b"sh"})
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        gate.admit(
            gate.Options(tmp_path / "missing.yaml", False),
            {b"SSH_ORIGINAL_COMMAND": b"dittohead upload v1 s1 pc-1"},
        )


def test_admit_refuses_a_station_the_config_does_not_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gate, "set_resource_limits", lambda limits: None)
    monkeypatch.setattr(gate, "RUNTIME_BASE", tmp_path / "no-runtime")
    (tmp_path / "dropbox" / "s1" / "inbox").mkdir(parents=True)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"dropbox: {tmp_path / 'dropbox'}\nsources:\n  pc-1: PC one\nstudies:\n  s1:\n"
        f"    destination: /d\n    uploaders: [{accounts.group_names([os.getgid()]).pop()}]\n",
        encoding="utf-8",
    )
    command = {b"SSH_ORIGINAL_COMMAND": b"dittohead upload v1 s1 PC-1"}
    with pytest.raises(UploadRejected) as caught:
        gate.admit(gate.Options(config, False), command)
    assert caught.value.message.startswith(
        "the station id 'PC-1' is not one this server knows (ids are case-sensitive: did you "
        "mean 'pc-1'?)"
    )
    assert caught.value.message.endswith("nothing was sent")
