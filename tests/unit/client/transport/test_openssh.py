"""The OpenSSH transport: when ``ssh`` carries an upload, how it is told to, and the fallback.

The server is the in-process asyncssh receiver from conftest; ``ssh`` is the real OpenSSH client
of this machine (tests/unit/client/test_deliver.py runs every send scenario through it as
well). Where a test needs ``ssh`` to misbehave, ``DITTOHEAD_SSH`` names a small script that
stands in for it, and says so.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from dittohead.client import cli
from dittohead.client.plan.scan import Watch, scan
from dittohead.client.plan.state import user_known_hosts
from dittohead.client.transport import Server, Unusable, openssh
from dittohead.core.errors import TransferError
from dittohead.core.grammar import UploadRequest
from tests.integration.harness import require
from tests.unit.client.conftest import (
    FILES,
    SOURCE,
    STUDY,
    FakeReceiver,
    carried_by,
    keyed,
    run_cli,
    write_tree,
)

REQUEST = UploadRequest(STUDY, SOURCE)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "data", FILES)


@pytest.fixture(autouse=True)
def real_ssh(monkeypatch: pytest.MonkeyPatch) -> str:
    path = shutil.which("ssh")
    require(path is not None, "openssh-client is not installed")
    assert path is not None
    monkeypatch.delenv("DITTOHEAD_SSH", raising=False)
    return path


def fake_ssh(tmp_path: Path, body: str) -> Path:
    """A stand-in for ``ssh``: a shell script; it appends its arguments to ``calls``."""
    script = tmp_path / "fake-ssh"
    script.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> {tmp_path / "calls"}\n' + textwrap.dedent(body).lstrip()
    )
    script.chmod(0o755)
    return script


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls"
    return path.read_text().splitlines() if path.exists() else []


# -- the command line -------------------------------------------------------------------------


def test_the_host_can_never_be_read_as_an_option(tmp_path: Path) -> None:
    server = Server("-oProxyCommand=touch /tmp/pwned", 2222, "jdoe", None, tmp_path / "kh")
    argv = openssh.ssh_argv("ssh", server, REQUEST, tmp_path / "kh")
    cut = argv.index("--")
    assert argv[cut + 1 :] == ["-oProxyCommand=touch /tmp/pwned", REQUEST.command()]
    assert argv[0] == "ssh"


def test_ssh_is_told_to_ask_nothing_and_read_no_config(tmp_path: Path) -> None:
    known = tmp_path / "kh"
    argv = openssh.ssh_argv("ssh", Server("drop", 2222, "jdoe"), REQUEST, known)
    options = {argv[i + 1] for i, a in enumerate(argv) if a == "-o"}
    assert argv[argv.index("-F") + 1] == "none"  # neither ~/.ssh/config nor /etc/ssh/ssh_config
    assert {
        "BatchMode=yes",  # never a password or passphrase prompt
        "StrictHostKeyChecking=yes",  # never a new host key
        f'UserKnownHostsFile="{known}"',
        f"GlobalKnownHostsFile={os.devnull}",
        "UpdateHostKeys=no",
        "PasswordAuthentication=no",
        "KbdInteractiveAuthentication=no",
        "ForwardAgent=no",
        "ForwardX11=no",
        "ClearAllForwardings=yes",
        "ControlMaster=no",
        "Compression=no",
    } <= options
    assert argv[argv.index("-c") + 1].startswith("aes128-gcm@openssh.com,")
    assert (argv[argv.index("-p") + 1], argv[argv.index("-l") + 1]) == ("2222", "jdoe")
    assert "-T" in argv  # no TTY
    assert not [o for o in options if o.startswith("Identity")]  # agent, ~/.ssh keys: as asyncssh


def test_an_identity_is_the_only_key_offered(tmp_path: Path) -> None:
    server = Server("drop", 22, "jdoe", tmp_path / "my key")
    argv = openssh.ssh_argv("ssh", server, REQUEST, tmp_path / "kh")
    assert f'IdentityFile="{tmp_path / "my key"}"' in argv
    assert "IdentitiesOnly=yes" in argv and "IdentityAgent=none" in argv


def test_which_ssh_is_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_ssh: str
) -> None:
    assert openssh.program() == real_ssh
    monkeypatch.setenv("DITTOHEAD_SSH", "builtin")
    assert openssh.program() is None
    monkeypatch.setenv("DITTOHEAD_SSH", str(tmp_path / "ssh"))
    assert openssh.program() == str(tmp_path / "ssh")
    monkeypatch.delenv("DITTOHEAD_SSH")
    monkeypatch.setenv("PATH", str(tmp_path))  # no ssh anywhere
    assert openssh.program() is None


WINDOWS_SSH = r"C:\Windows\System32\OpenSSH\ssh.exe"


@pytest.mark.parametrize(
    ("environ", "present", "chosen"),
    [
        ({"SYSTEMROOT": r"C:\Windows"}, {WINDOWS_SSH}, WINDOWS_SSH),
        # os.environ spells it so on Windows; a plain mapping may not
        (
            {"SystemRoot": r"D:\WINNT"},
            {r"D:\WINNT\System32\OpenSSH\ssh.exe"},
            r"D:\WINNT\System32\OpenSSH\ssh.exe",
        ),
        ({}, {WINDOWS_SSH}, WINDOWS_SSH),  # unset: where Windows always is
        ({"SYSTEMROOT": r"Windows"}, {r"Windows\System32\OpenSSH\ssh.exe"}, None),
        ({"SYSTEMROOT": r"\Windows"}, {r"\Windows\System32\OpenSSH\ssh.exe"}, None),
        ({"SYSTEMROOT": r"C:\Windows"}, set(), None),  # the feature is not installed
        # never an ssh.exe from PATH or the current folder
        ({"SYSTEMROOT": r"C:\Windows", "PATH": r"C:\Tools"}, {r"C:\Tools\ssh.exe"}, None),
    ],
    ids=["installed", "other-root", "unset", "relative", "no-drive", "absent", "on-path-only"],
)
def test_windows_uses_its_own_openssh_or_asyncssh(
    environ: dict[str, str], present: set[str], chosen: str | None
) -> None:
    asked: list[str] = []

    def is_file(path: str) -> bool:
        asked.append(path)
        return path in present

    assert openssh.windows_ssh(environ, is_file) == chosen
    assert len(asked) == 1  # one place looked at, nothing searched


def test_on_windows_the_program_is_windows_own_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """`program` on Windows (os.name and the file check stand in for Windows here)."""
    monkeypatch.setattr(os, "name", "nt")
    monkeypatch.setattr(os.path, "isfile", lambda path: path == WINDOWS_SSH)
    monkeypatch.delenv("DITTOHEAD_SSH", raising=False)
    monkeypatch.setenv("SYSTEMROOT", r"C:\Windows")
    assert openssh.program() == WINDOWS_SSH
    monkeypatch.setenv("DITTOHEAD_SSH", "builtin")
    assert openssh.program() is None
    monkeypatch.setenv("DITTOHEAD_SSH", r"C:\Program Files\OpenSSH\ssh.exe")
    assert openssh.program() == r"C:\Program Files\OpenSSH\ssh.exe"
    monkeypatch.delenv("DITTOHEAD_SSH")
    monkeypatch.setattr(os.path, "isfile", lambda path: False)
    assert openssh.program() is None


@pytest.mark.skipif(os.name == "nt", reason="POSIX lookup (Windows: windows_ssh)")
def test_ssh_is_found_on_path_as_shutil_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folders = {name: tmp_path / name for name in ("plain", "dir", "noexec", "good", "later")}
    for path in folders.values():
        path.mkdir()
    (folders["plain"] / "other").write_text("")
    (folders["dir"] / "ssh").mkdir()  # a folder named ssh is not the program
    (folders["noexec"] / "ssh").write_text("")  # not executable
    for name in ("good", "later"):
        (folders[name] / "ssh").write_text("#!/bin/sh\n")
        (folders[name] / "ssh").chmod(0o755)
    f = {k: str(v) for k, v in folders.items()}
    for search in (
        f"{f['plain']}:{f['dir']}:{f['noexec']}:{f['good']}:{f['later']}",
        f"{f['later']}:{f['good']}",
        f"{f['plain']}::{f['dir']}",
        f"::{f['good']}",
        f["noexec"],
        "",
    ):
        monkeypatch.setenv("PATH", search)
        assert openssh._which("ssh") == shutil.which("ssh"), search
    monkeypatch.chdir(folders["good"])  # an empty entry never means the current folder
    monkeypatch.setenv("PATH", f":{f['plain']}")
    assert openssh._which("ssh") is None


def test_paths_with_spaces_and_percent_signs_reach_ssh_as_they_are(
    key_server: FakeReceiver, folder: Path, identity: Path, tmp_path: Path
) -> None:
    # ssh splits -o values at spaces and expands %-tokens in both file options.
    odd = tmp_path / "Lab PC %h 100%"
    odd.mkdir()
    key = odd / "my key"
    key.write_bytes(identity.read_bytes())
    key.chmod(0o600)
    pinned = odd / "known hosts"
    pinned.write_text(key_server.known_hosts_line())
    argv = run_cli(key_server, folder, "--identity", str(key), "--known-hosts", str(pinned))
    assert cli.main(argv) == 0
    assert carried_by(key_server) == ["OpenSSH"]


def test_a_path_ssh_would_expand_from_the_environment_is_not_given_to_it(tmp_path: Path) -> None:
    with pytest.raises(Unusable):
        openssh.ssh_argv("ssh", Server("h"), REQUEST, tmp_path / "${HOME}")


# -- the dialer ------------------------------------------------------------------------------


def test_ssh_takes_its_connection_from_the_dialer_when_there_is_one(tmp_path: Path) -> None:
    command = openssh.dialer_command()
    if os.name == "posix":
        assert command is not None
        assert command.endswith("dialer.py'") and "'-I' '-S'" in command
    argv = openssh.ssh_argv("ssh", Server("h"), REQUEST, tmp_path / "kh", command)
    proxy = ["ProxyUseFdpass=yes", f"ProxyCommand={command}"]
    assert [a for a in argv if a.startswith("Proxy")] == (proxy if command else [])
    plain = openssh.ssh_argv("ssh", Server("h"), REQUEST, tmp_path / "kh")
    assert [a for a in plain if a.startswith("Proxy")] == []


@pytest.mark.skipif(os.name != "posix", reason="ssh takes a dialer's socket on POSIX")
def test_no_dialer_where_ssh_could_not_run_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)  # a frozen build: no dialer.py
    assert openssh.dialer_command() is None
    monkeypatch.setattr(sys, "frozen", False)
    monkeypatch.setattr(sys, "executable", r"/opt/py\thon")
    assert openssh.dialer_command() is not None  # a backslash is just a character to sh
    monkeypatch.setattr(sys, "executable", "/opt/py\nthon")
    assert openssh.dialer_command() is None  # no shell word holds a newline for ssh
    monkeypatch.setattr(sys, "executable", "")
    assert openssh.dialer_command() is None


@pytest.mark.skipif(os.name != "posix", reason="ssh takes a dialer's socket on POSIX")
def test_the_dialer_is_told_where_to_connect_outside_any_shell(tmp_path: Path) -> None:
    # Stands in for ssh: records what the dialer would find in its environment.
    seen = tmp_path / "seen"
    script = fake_ssh(
        tmp_path,
        f"""
        printf '%s\\n' "$SHELL" "$DITTOHEAD_DIAL_HOST" "$DITTOHEAD_DIAL_PORT" > '{seen}.tmp'
        mv '{seen}.tmp' '{seen}'
        exit 255
        """,
    )
    (tmp_path / "kh").write_text("")
    server = Server("drop.example.org; touch pwned", 2222, known_hosts=tmp_path / "kh")
    session = openssh.Session(str(script), server, REQUEST)
    assert session.proc.wait(timeout=30) == openssh.SSH_FAILED
    session.abandon()
    assert seen.read_text().splitlines() == [
        "/bin/sh",  # ssh runs the ProxyCommand with $SHELL -c: one whose quoting is known
        "drop.example.org; touch pwned",
        "2222",
    ]
    options = calls(tmp_path)[0].split(" -- ")[0]
    assert "pwned" not in options  # the host is in no option, the ProxyCommand least of all


@pytest.mark.skipif(os.name != "posix", reason="ssh takes a dialer's socket on POSIX")
def test_a_python_and_dialer_at_odd_paths_still_connect_through_ssh(
    key_server: FakeReceiver, folder: Path, identity: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # ssh expands %-tokens in the ProxyCommand, then /bin/sh reads it: quotes, spaces and %
    # in either path must reach the shell as they are, or ssh gives up and asyncssh sends.
    odd = tmp_path / 'it\'s a 100% "odd" $HOME folder'
    odd.mkdir()
    (odd / "python 3").symlink_to(sys.executable)
    fake_module = odd / "openssh.py"
    (odd / "dialer.py").write_bytes(Path(openssh.__file__).with_name("dialer.py").read_bytes())
    monkeypatch.setattr(sys, "executable", str(odd / "python 3"))
    monkeypatch.setattr(openssh, "__file__", str(fake_module))
    command = openssh.dialer_command()
    assert command is not None and "100%% " in command  # the odd folder's, for ssh to expand
    assert cli.main(keyed(key_server, folder, identity, tmp_path)) == 0
    assert carried_by(key_server) == ["OpenSSH"]
    assert [u.files for u in key_server.uploads] == [FILES]


@pytest.mark.skipif(os.name != "posix", reason="ssh takes a dialer's socket on POSIX")
def test_a_server_the_dialer_cannot_reach_is_named_and_asyncssh_explains(
    key_server: FakeReceiver, folder: Path, identity: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    with socket.socket() as s:  # a port nobody listens on: take a free one and close it
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    argv = keyed(key_server, folder, identity, tmp_path, "-v")
    argv[argv.index("--port") + 1] = port
    assert cli.main(argv) == TransferError.exit_code
    err = capsys.readouterr().err
    assert (
        f"OpenSSH did not send (dialer: cannot connect to 127.0.0.1 port {port}: "
        "Connection refused)" in err
    )
    assert f"refused the connection on port {port}" in err.splitlines()[-1]
    assert key_server.connections == []


def test_the_known_hosts_file_is_the_pinned_one_else_dittoheads_own(tmp_path: Path) -> None:
    pinned = tmp_path / "pinned"
    assert openssh.known_hosts_file(Server("h", known_hosts=pinned)) == pinned
    assert Path(openssh.known_hosts_file(Server("h"))) == user_known_hosts()


def test_no_known_hosts_file_yet_means_no_ssh_at_all(tmp_path: Path) -> None:
    script = fake_ssh(tmp_path, "exit 0\n")
    with pytest.raises(Unusable, match="no known-hosts file"):
        openssh.Session(str(script), Server("h", known_hosts=tmp_path / "absent"), REQUEST)
    assert calls(tmp_path) == []  # trust on first use is asyncssh's, in dittohead's words


@pytest.mark.skipif(sys.platform != "linux", reason="F_SETPIPE_SZ is Linux's")
def test_the_pipe_into_ssh_holds_several_chunks(tmp_path: Path) -> None:
    import fcntl

    script = fake_ssh(tmp_path, "cat > /dev/null\n")
    (tmp_path / "kh").write_text("")
    session = openssh.Session(str(script), Server("h", known_hosts=tmp_path / "kh"), REQUEST)
    try:
        assert session.proc.stdin is not None
        size = fcntl.fcntl(session.proc.stdin.fileno(), fcntl.F_GETPIPE_SZ)
        assert size == openssh.PIPE_SIZE
    finally:
        session.abandon()


def started_session(tmp_path: Path, body: str) -> openssh.Session:
    """A session whose stand-in ``ssh`` has run `body` (in `tmp_path`) to ``touch ready``."""
    script = fake_ssh(tmp_path, f"cd '{tmp_path}'\n{body}")
    (tmp_path / "kh").write_text("")
    session = openssh.Session(str(script), Server("h", known_hosts=tmp_path / "kh"), REQUEST)
    deadline = time.monotonic() + 10
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline, "the stand-in for ssh did not start"
        time.sleep(0.01)
    return session


def test_abandoning_ends_a_child_of_ssh_that_reads_its_stdin(tmp_path: Path) -> None:
    # A wrapper script (or a ProxyCommand) whose child holds ssh's pipes: killing ssh alone
    # left the child reading stdin and the client waiting for the child's output to end.
    session = started_session(tmp_path, "touch ready\ncat > /dev/null\n")
    started = time.monotonic()
    session.abandon()
    assert time.monotonic() - started < openssh.DRAIN_GRACE
    assert session.proc.returncode is not None


def test_abandoning_does_not_wait_on_a_child_that_keeps_the_output_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openssh, "DRAIN_GRACE", 0.3)
    session = started_session(
        tmp_path, "sleep 30 </dev/null &\necho $! > child\ntouch ready\ncat > /dev/null\n"
    )
    child = int((tmp_path / "child").read_text())
    try:
        started = time.monotonic()
        session.abandon()
        assert time.monotonic() - started < 5
        os.kill(child, 0)  # still running, holding the output: the client went on without it
    finally:
        os.kill(child, signal.SIGKILL)


# -- falling back -----------------------------------------------------------------------------


def test_ssh_giving_up_sends_through_asyncssh(
    key_server: FakeReceiver,
    folder: Path,
    identity: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Stands in for an ssh that refuses the host key after reading some of the stream.
    script = fake_ssh(
        tmp_path,
        """
        head -c 1000 >/dev/null
        echo "Host key verification failed." >&2
        exit 255
        """,
    )
    monkeypatch.setenv("DITTOHEAD_SSH", str(script))
    assert cli.main(keyed(key_server, folder, identity, tmp_path, "-v")) == 0
    assert len(calls(tmp_path)) == 1
    assert carried_by(key_server) == ["AsyncSSH"]
    assert [u.files for u in key_server.uploads] == [FILES]
    err = capsys.readouterr().err
    assert "OpenSSH did not send (Host key verification failed.)" in err


def test_an_ssh_that_leaves_a_process_holding_its_output_is_not_waited_for(
    key_server: FakeReceiver,
    folder: Path,
    identity: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Stands in for an ssh that gives up and leaves a process behind with its stderr.
    monkeypatch.setattr(openssh, "DRAIN_GRACE", 0.3)
    script = fake_ssh(
        tmp_path,
        f"""
        sleep 30 </dev/null &
        echo $! > '{tmp_path / "child"}'
        head -c 1000 >/dev/null
        echo "Connection closed by remote host" >&2
        exit 255
        """,
    )
    monkeypatch.setenv("DITTOHEAD_SSH", str(script))
    try:
        started = time.monotonic()
        assert cli.main(keyed(key_server, folder, identity, tmp_path)) == 0
        assert time.monotonic() - started < 10
        assert carried_by(key_server) == ["AsyncSSH"]
        assert [u.files for u in key_server.uploads] == [FILES]
    finally:
        os.kill(int((tmp_path / "child").read_text()), signal.SIGKILL)


def test_a_program_that_cannot_run_is_no_obstacle(
    key_server: FakeReceiver, folder: Path, identity: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("DITTOHEAD_SSH", str(tmp_path / "no-such-ssh"))
    assert cli.main(keyed(key_server, folder, identity, tmp_path)) == 0
    assert carried_by(key_server) == ["AsyncSSH"]


# -- starting early ---------------------------------------------------------------------------


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[openssh.Session]:
    """Every ssh the client starts, in order (the real ones)."""
    sessions: list[openssh.Session] = []
    real_session = openssh.Session

    def session_spy(*args: Any) -> openssh.Session:
        sessions.append(real_session(*args))
        return sessions[-1]

    monkeypatch.setattr(openssh, "Session", session_spy)
    return sessions


def test_the_watch_fires_once_at_the_first_file_not_confirmed(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "pc", {"a.txt": b"a", "b.txt": b"b", "c.txt": b"c"})
    plan = scan(root)
    confirmed = {f.path: (f.size, f.mtime_ns) for f in plan.files}
    fired: list[int] = []
    watch = Watch(confirmed, lambda: fired.append(1))
    scan(root, watch=watch)
    assert fired == [] and not watch.fired  # nothing new: never
    confirmed["b.txt"] = (99, 0)
    confirmed.pop("c.txt")
    watch = Watch(confirmed, lambda: fired.append(1))
    scan(root, watch=watch)
    assert fired == [1] and watch.fired  # b.txt changed, c.txt is new: once


def test_ssh_starts_while_the_scan_is_still_going(
    key_server: FakeReceiver,
    identity: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = write_tree(tmp_path / "pc", {f"s{i:02d}/trial.txt": b"x" * i for i in range(20)})
    events: list[str] = []
    real_session = openssh.Session

    def scan_spy(*args: Any, **kwargs: Any) -> Any:
        plan = scan(*args, **kwargs)
        events.append("scan done")
        return plan

    def session_spy(*args: Any) -> openssh.Session:
        events.append("ssh started")
        return real_session(*args)

    monkeypatch.setattr("dittohead.client.plan.job.scan", scan_spy)
    monkeypatch.setattr(openssh, "Session", session_spy)
    assert cli.main(keyed(key_server, root, identity, tmp_path)) == 0
    assert events == ["ssh started", "scan done"]
    assert carried_by(key_server) == ["OpenSSH"]


def test_an_early_ssh_is_stopped_when_the_scan_then_fails(
    key_server: FakeReceiver,
    identity: Path,
    tmp_path: Path,
    started: list[openssh.Session],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # "a.txt" is new (ssh starts), then a name Windows cannot store ends the scan.
    root = write_tree(tmp_path / "pc", {"a.txt": b"a", "z/con.txt": b"c"})
    code = cli.main(keyed(key_server, root, identity, tmp_path))
    assert code != 0 and "con.txt" in capsys.readouterr().err
    [session] = started
    assert session.proc.returncode is not None  # ended, not left running
    assert key_server.uploads == [] or key_server.uploads[0].manifest == b""


def test_an_early_ssh_that_waited_too_long_is_replaced(
    key_server: FakeReceiver,
    folder: Path,
    identity: Path,
    tmp_path: Path,
    started: list[openssh.Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(openssh, "EARLY_MAX_AGE", 0.0)
    assert cli.main(keyed(key_server, folder, identity, tmp_path)) == 0
    assert len(started) == 2
    assert started[0].proc.returncode is not None
    assert [u.files for u in key_server.uploads if not u.problems] == [FILES]


# -- what it spares ---------------------------------------------------------------------------

OPENSSH_SEND = textwrap.dedent(
    """
    import json, sys
    from dittohead.client.cli import main
    status = main(sys.argv[1:])
    print(json.dumps({"status": status, "asyncssh": "asyncssh" in sys.modules}))
    """
)


def test_a_send_through_openssh_never_loads_asyncssh(
    key_server: FakeReceiver, folder: Path, identity: Path, tmp_path: Path
) -> None:
    argv = keyed(key_server, folder, identity, tmp_path, "--state", str(tmp_path / "st.json"))
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-I", "-c", OPENSSH_SEND, *argv],
        capture_output=True, text=True, check=False, timeout=60, env=env,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"status": 0, "asyncssh": False}, done.stderr
    assert carried_by(key_server) == ["OpenSSH"]


def test_a_server_trusted_on_first_use_is_then_reached_through_openssh(
    key_server: FakeReceiver,
    folder: Path,
    identity: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # First contact: no known-hosts file, so asyncssh asks (the collector says yes) and writes
    # dittohead's own file; the next send finds the key there through OpenSSH.
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))
    argv = run_cli(key_server, folder, "--identity", str(identity))
    assert cli.main(argv) == 0
    assert "Trust this server" in capsys.readouterr().err
    (folder / "eprime" / "s03.txt").write_bytes(b"three")
    assert cli.main(argv) == 0
    assert "Trust this server" not in capsys.readouterr().err
    assert carried_by(key_server) == ["AsyncSSH", "OpenSSH"]
