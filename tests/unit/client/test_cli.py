"""cli: options, dry runs, and the one catch site (messages and exit codes)."""

from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from dittohead.client import api, cli, presets_cmd
from dittohead.client.cli import main
from dittohead.client.progress import human_bytes
from dittohead.client.transport import openssh
from dittohead.core.errors import LocalFileError, NameRejected, ProtocolError, UsageError

from .conftest import USER, MakeServer, write_tree

STUDY, SOURCE = "nccam3", "brogden-a"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Any attempt to connect (asyncssh, or OpenSSH's ssh) is recorded and fails the command."""
    attempts: list[object] = []

    async def connect(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise AssertionError("this command must not connect")

    def start_ssh(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise AssertionError("this command must not start ssh")

    monkeypatch.setattr(asyncssh, "connect", connect)
    monkeypatch.setattr(openssh, "Session", start_ssh)
    return attempts


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_tree(
        tmp_path / "data", {"eprime/a.txt": b"aaa", "eprime/b.txt": b"b", "x.csv": b""}
    )


def argv(folder: Path, *extra: str) -> list[str]:
    return [
        "send",
        "--host",
        "drop.example.org",
        "--study",
        STUDY,
        "--source",
        SOURCE,
        *extra,
        str(folder),
    ]


def test_dry_run_lists_files_and_connects_to_nothing(
    folder: Path, no_network: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv(folder, "--dry-run")) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["eprime/a.txt", "eprime/b.txt", "x.csv"]
    assert "3 files" in err and "nothing was sent" in err
    assert no_network == []


def test_dry_run_json(
    folder: Path, no_network: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv(folder, "--dry-run", "--json")) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == {
        "dry_run": True,
        "files": ["eprime/a.txt", "eprime/b.txt", "x.csv"],
        "bytes": 4,
    }
    assert out.count("\n") == 1
    assert no_network == []


def test_dry_run_respects_the_state(
    folder: Path, tmp_path: Path, no_network: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    st_ = (folder / "x.csv").stat()
    state = tmp_path / "state.json"
    state.write_text(
        json.dumps(
            {
                "version": 1,
                "server": "drop.example.org:22",
                "study": STUDY,
                "source": SOURCE,
                "files": {"x.csv": [st_.st_size, st_.st_mtime_ns]},
            }
        )
    )
    assert main(argv(folder, "--dry-run", "--state", str(state))) == 0
    assert capsys.readouterr().out.splitlines() == ["eprime/a.txt", "eprime/b.txt"]


def test_host_comes_from_the_environment(
    folder: Path,
    no_network: list[object],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["send", "--study", STUDY, "--source", SOURCE, "--dry-run", str(folder)]
    assert main(args) == UsageError.exit_code
    assert "--host" in capsys.readouterr().err
    monkeypatch.setenv("DITTOHEAD_HOST", "drop.example.org")
    assert main(args) == 0


@pytest.mark.parametrize(
    ("study", "source"), [("NCCAM3", SOURCE), ("a b", SOURCE), (STUDY, "-dash"), (STUDY, "x/y")]
)
def test_study_and_source_are_checked_before_anything_else(
    tmp_path: Path,
    no_network: list[object],
    capsys: pytest.CaptureFixture[str],
    study: str,
    source: str,
) -> None:
    # no host and no folder: the study/station error must come first
    code = main(["send", f"--study={study}", f"--source={source}", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == ProtocolError.exit_code
    assert err.startswith("dittohead: ") and err.count("\n") == 1
    assert "not a valid" in err


def test_bad_names_exit_with_the_name_error_code(
    tmp_path: Path, no_network: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_tree(tmp_path / "d", {"a|b.txt": b"", "ok.txt": b""})
    assert main(argv(folder)) == NameRejected.exit_code
    err = capsys.readouterr().err
    assert err.startswith("dittohead: 1 name cannot be sent (nothing was sent): 'a|b.txt'")


def test_missing_folder(
    tmp_path: Path, no_network: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv(tmp_path / "nope")) == LocalFileError.exit_code
    assert "nothing was sent" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["send"],
        ["send", "--study", STUDY, "--source", SOURCE],
        ["upload"],
        ["send", "--port", "0"],
    ],
)
def test_usage_errors_are_one_line_exit_2(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("dittohead: ") and err.count("\n") == 1


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", "--help"]) == 0
    out = capsys.readouterr().out
    for option in (
        "--host",
        "--port",
        "--user",
        "--identity",
        "--known-hosts",
        "--state",
        "--json",
        "--dry-run",
    ):
        assert option in out


def test_an_empty_folder_has_nothing_to_send(
    tmp_path: Path, no_network: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert main(argv(tmp_path / "empty")) == 0
    assert "nothing to send" in capsys.readouterr().out
    assert no_network == []


def test_internal_errors_are_one_line_exit_70(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(presets_cmd, "prepare", boom)
    assert main(argv(folder)) == 70
    err = capsys.readouterr().err
    assert err == "dittohead: internal error: ZeroDivisionError: oops\n"
    assert main(argv(folder, "-v")) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith(
        "dittohead: internal error: ZeroDivisionError: oops"
    )


def test_ctrl_c_says_nothing_was_stored(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run", interrupted)
    assert main(argv(folder)) == 130
    assert "dittohead: interrupted; nothing was stored" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal(
    make_server: MakeServer,
    client_key: asyncssh.SSHKey,
    identity: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = make_server(authorized={USER: [client_key.convert_to_public()]})
    pinned = tmp_path / "kh"
    pinned.write_text(server.known_hosts_line())
    data = write_tree(tmp_path / "d", {"a.bin": b"x" * 3_000_000})
    args = [
        "send", "--host", server.host, "--port", str(server.port), "--identity", str(identity),
        "--known-hosts", str(pinned), "--study", STUDY, "--source", SOURCE, "--json", str(data),
    ]  # fmt: skip
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert main(args) == 0
    assert "sending: 100%" in terminal.getvalue()
    assert "\r" in terminal.getvalue()
    assert json.loads(capsys.readouterr().out)["files"] == 1  # stdout stays pure JSON


def test_verbose_shows_skipped_links_as_warnings(
    tmp_path: Path, no_network: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_tree(tmp_path / "d", {"a.txt": b""})
    (folder / "l").symlink_to(folder / "a.txt")
    assert main(argv(folder, "--dry-run")) == 0
    err = capsys.readouterr().err
    assert "dittohead: warning: skipped l: it is a symbolic link" in err


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 bytes"
    assert human_bytes(1023) == "1023 bytes"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(5 * 1024**3) == "5.0 GiB"
    assert human_bytes(3 * 1024**5) == "3072.0 TiB"


def test_api_module_exposes_the_library_api() -> None:
    # what integration tests and the demo call
    assert callable(api.send_folder) and callable(api.prepare) and callable(api.run)


@pytest.mark.parametrize("case", ["dry-run", "usage-error"])
def test_the_command_exits_at_once_with_its_output_and_status(tmp_path: Path, case: str) -> None:
    # ``python -m dittohead.client.cli`` ends with os._exit (no interpreter teardown): what it
    # printed must still all arrive, with main's exit status.
    folder = write_tree(tmp_path / "pc", {f"eprime/{i:05d}.txt": b"x" for i in range(300)})
    args = argv(folder, "--dry-run", "--json")
    if case == "usage-error":
        args = [a for a in args if a != "--study"]  # "--study" without its name: refused
    done = subprocess.run(
        [sys.executable, "-m", "dittohead.client.cli", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if case == "dry-run":
        assert done.returncode == 0, done.stderr
        assert len(json.loads(done.stdout)["files"]) == 300
    else:
        assert done.returncode == UsageError.exit_code
        assert done.stderr.startswith("dittohead: ")
        assert done.stdout == ""


def test_the_command_runs_without_the_cyclic_collector_and_exits_with_mains_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[object] = []

    def fake_main() -> int:
        seen.append(gc.isenabled())
        return 3

    class Exited(Exception):
        pass

    def fake_exit(code: int) -> None:
        seen.append(code)
        raise Exited

    monkeypatch.setattr(cli, "main", fake_main)
    monkeypatch.setattr(os, "_exit", fake_exit)
    try:
        with pytest.raises(Exited):
            cli.entry()
    finally:
        gc.enable()
    assert seen == [False, 3]


# -- the server as collectors write it (--host NAME:PORT) -------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("drop.example.org", ("drop.example.org", None)),
        ("drop.example.org:2222", ("drop.example.org", 2222)),
        ("10.0.0.5:22", ("10.0.0.5", 22)),
        ("[2001:db8::5]:2222", ("2001:db8::5", 2222)),
        ("[2001:db8::5]", ("2001:db8::5", None)),
        ("2001:db8::5", ("2001:db8::5", None)),  # a bare IPv6 address has no port
    ],
)
def test_split_host(text: str, expected: tuple[str, int | None]) -> None:
    assert presets_cmd.split_host(text) == expected


@pytest.mark.parametrize("text", ["drop:0", "drop:http", ":22", "[::1", "[::1]x", "[]:22"])
def test_split_host_refuses_what_is_not_a_server(text: str) -> None:
    with pytest.raises(UsageError, match="--host"):
        presets_cmd.split_host(text)


def test_a_send_to_host_colon_port_reaches_that_port(
    make_server: MakeServer,
    client_key: asyncssh.SSHKey,
    identity: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = make_server(authorized={USER: [client_key.convert_to_public()]})
    pinned = tmp_path / "kh"
    pinned.write_text(server.known_hosts_line())
    data = write_tree(tmp_path / "d", {"a.txt": b"a"})
    args = [
        "send", "--host", f"{server.host}:{server.port}", "--identity", str(identity),
        "--known-hosts", str(pinned), "--study", STUDY, "--source", SOURCE, "--json", str(data),
    ]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["files"] == 1
    assert len(server.uploads) == 1
    # the same server as with --port: what it confirmed is not sent again
    again = ["send", "--host", server.host, "--port", str(server.port), *args[3:]]
    assert main(again) == 0
    assert json.loads(capsys.readouterr().out)["nothing_to_send"] is True


def test_a_port_given_twice_must_agree(
    folder: Path, no_network: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    rest = ["--study", STUDY, "--source", SOURCE, "--dry-run", str(folder)]
    assert main(["send", "--host", "drop.example.org:2222", "--port", "2222", *rest]) == 0
    capsys.readouterr()
    code = main(["send", "--host", "drop.example.org:2222", "--port", "22", *rest])
    assert code == UsageError.exit_code
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        "dittohead: the server 'drop.example.org:2222' says port 2222 but --port says 22: "
        "give the port once"
    )
    assert no_network == []


# -- where the files land ---------------------------------------------------------------------


def test_dry_run_says_where_the_files_land(
    folder: Path, no_network: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv(folder, "--dry-run")) == 0
    err = capsys.readouterr().err
    assert (
        "stored in the study's folder as eprime/ (2 files), "
        "1 file at the top of the study's folder: x.csv" in err
    )


def test_a_subfolder_named_as_folder_is_warned_about_and_shown_at_the_top(
    tmp_path: Path, no_network: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    study_folder = write_tree(tmp_path / STUDY, {"eprime/s01.txt": b"1", "eprime/s02.txt": b"2"})
    assert main(argv(study_folder / "eprime", "--dry-run")) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["s01.txt", "s02.txt"]
    lines = err.splitlines()
    assert lines[0].startswith(f"dittohead: warning: {study_folder / 'eprime'} looks like one of")
    assert f"name eprime after it (dittohead send … {study_folder} eprime)" in lines[0]
    assert "as 2 files at the top of the study's folder: s01.txt, s02.txt" in lines[1]
    # the study's folder itself, with the thing named after it: no warning
    assert main([*argv(study_folder, "--dry-run"), "eprime"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_receipt_says_where_the_files_were_stored(
    make_server: MakeServer,
    client_key: asyncssh.SSHKey,
    identity: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = make_server(authorized={USER: [client_key.convert_to_public()]})
    pinned = tmp_path / "kh"
    pinned.write_text(server.known_hosts_line())
    data = write_tree(tmp_path / "d", {"eprime/a.txt": b"a", "biopac/r.acq": b"r"})
    args = [
        "send", "--host", server.host, "--port", str(server.port), "--identity", str(identity),
        "--known-hosts", str(pinned), "--study", STUDY, "--source", SOURCE, str(data),
    ]  # fmt: skip
    assert main(args) == 0
    assert "  stored:   biopac/ (1 file), eprime/ (1 file)\n" in capsys.readouterr().out


# -- the progress line ------------------------------------------------------------------------


def test_no_100_percent_before_a_refusal_and_the_refusal_on_its_own_line(
    make_server: MakeServer,
    client_key: asyncssh.SSHKey,
    identity: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The receiver reads the whole stream, then refuses it.
    server = make_server(authorized={USER: [client_key.convert_to_public()]}, mode="fail")
    pinned = tmp_path / "kh"
    pinned.write_text(server.known_hosts_line())
    data = write_tree(tmp_path / "d", {"a.bin": b"x" * 3_000_000})
    args = [
        "send", "--host", server.host, "--port", str(server.port), "--identity", str(identity),
        "--known-hosts", str(pinned), "--study", STUDY, "--source", SOURCE, str(data),
    ]  # fmt: skip
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert main(args) == 65
    shown = terminal.getvalue()
    before, refusal = shown.split("dittohead: ", 1)
    assert "100%" not in shown
    assert "waiting for the server to confirm" in before  # the stream was all sent
    # the progress line was erased: the refusal starts a line of its own
    assert before.endswith("\r") and before.rsplit("\r", 2)[-2].strip() == ""
    assert refusal.startswith("the upload is larger than this server accepts")
