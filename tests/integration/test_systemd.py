"""The shipped systemd files and the processor under real socket activation.

- every unit passes ``systemd-analyze verify`` with nothing on stderr (verify exits 0 on
  unknown keys, so stderr is what counts). The units name ``/usr/bin/dittohead-processor``,
  which only exists once the package is installed: they are verified from a copy whose
  ``ExecStart=`` points at this venv's ``dittohead-processor`` instead; nothing else changes.
- both services rate SAFE, exposure below 1.0, in ``systemd-analyze security --offline=yes``;
- ``systemd-sysusers``/``systemd-tmpfiles --root`` on the shipped files make the accounts and
  folders;
- the processor, started by ``systemd-socket-activate`` on a poke from a real collector and
  running as a real service account, speaks sd_notify to a datagram socket the test reads;
- ``dittohead-admin check`` passes a good deployment and names each broken setting.

Needs the systemd tools and, for the last three, root (real users); `harness.require` skips
off CI and fails on CI.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from dittohead.receiver.admin import cli
from dittohead.receiver.config.model import Config, load_config
from dittohead.receiver.processor.finalize import _SYNC_AHEAD_FILES
from tests.integration.harness import REPO, Accounts, deployment, require, run
from tests.support.server import STUDY, Server, config_doc, make_server, write_config

pytestmark = pytest.mark.systemd

UNIT_DIR = REPO / "systemd"
UNITS = sorted(
    p.name for p in UNIT_DIR.iterdir() if p.suffix in (".service", ".socket", ".timer", ".path")
)
SERVICES = [u for u in UNITS if u.endswith(".service")]
SHIPPED_EXEC = "/usr/bin/dittohead-processor"
SHIPPED_NOTIFY = "/usr/bin/dittohead-notify"


def need_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed (the systemd package)")
    assert path is not None
    return path


def need_root() -> None:
    require(os.geteuid() == 0, "needs root (real users, groups and ownership)")


@pytest.fixture(scope="module")
def unit_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units with ExecStart= pointing at this venv's entry point (see the docstring)."""
    processor = Path(sys.prefix) / "bin" / "dittohead-processor"
    notify = Path(sys.prefix) / "bin" / "dittohead-notify"
    for program in (processor, notify):
        require(program.exists(), f"{program} is missing: pip install -e . first")
    out = tmp_path_factory.mktemp("units")
    for name in UNITS:
        text = (UNIT_DIR / name).read_text().replace(SHIPPED_EXEC, str(processor))
        (out / name).write_text(text.replace(SHIPPED_NOTIFY, str(notify)))
    return out


def test_every_shipped_unit_is_checked() -> None:
    assert UNITS == [
        "dittohead-notify.path",
        "dittohead-notify.service",
        "dittohead-notify.timer",
        "dittohead-processor.service",
        "dittohead-processor.socket",
        "dittohead-processor.timer",
        "dittohead-rescan.service",
    ]


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_without_a_word(unit_copy: Path, unit: str) -> None:
    tool = need_tool("systemd-analyze")
    result = run(tool, "verify", "--man=no", unit_copy / unit, check=False, cwd=unit_copy)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("unit", SERVICES)
def test_service_is_rated_safe(unit_copy: Path, unit: str) -> None:
    tool = need_tool("systemd-analyze")
    result = run(tool, "security", "--offline=yes", unit_copy / unit, check=False)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match[1]) < 1.0 and match[2] == "SAFE", result.stdout


def _sandbox(unit: str) -> list[str]:
    text = (UNIT_DIR / unit).read_text()
    block = text.split("# --- sandbox", 1)[1].split("[Install]")[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def _setting(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in _sandbox(unit) if line.startswith(f"{key}=")]


def test_notify_reaches_the_relay_only() -> None:
    """Network for the mail, but to the relay alone: every address denied but localhost (the
    default relay; a remote one is added by a drop-in), no unix sockets, and otherwise the
    processor's sandbox (plus what the processor cannot have: PrivateUsers, ProcSubset)."""
    unit = "dittohead-notify.service"
    assert _setting(unit, "IPAddressDeny") == ["any"]
    assert _setting(unit, "IPAddressAllow") == ["localhost"]
    assert _setting(unit, "RestrictAddressFamilies") == ["AF_INET AF_INET6"]
    assert _setting(unit, "PrivateNetwork") == []
    # It writes the notices folder, never the processor's journal beside it.
    queue_parent = Config(dropbox=Path("/srv/dropbox")).state_dir / "notices"
    assert _setting(unit, "ReadWritePaths") == [f"-{queue_parent}"]
    processor = {
        line
        for line in _sandbox("dittohead-processor.service")
        if "=" in line  # not the rest of the "# --- sandbox" heading
        and not line.startswith(("PrivateNetwork=", "RestrictAddressFamilies=", "ReadWritePaths="))
    }
    assert processor <= set(_sandbox(unit))
    assert {"PrivateUsers=yes", "ProcSubset=pid"} <= set(_sandbox(unit))


def test_notify_path_unit_watches_the_processors_queue() -> None:
    text = (UNIT_DIR / "dittohead-notify.path").read_text()
    queue = Config(dropbox=Path("/srv/dropbox")).state_dir / "notices" / "queue"
    assert f"PathChanged={queue}" in text.splitlines()
    assert "Unit=dittohead-notify.service" in text.splitlines()


def test_rescan_runs_in_the_processors_sandbox() -> None:
    assert _sandbox("dittohead-rescan.service") == _sandbox("dittohead-processor.service")
    assert "PrivateUsers=yes" not in _sandbox("dittohead-processor.service")


def test_socket_unit_matches_the_config_default() -> None:
    text = (UNIT_DIR / "dittohead-processor.socket").read_text()
    default = load_config_default_socket()
    assert f"ListenStream={default}" in text
    for line in ("Accept=no", "SocketMode=0660", "TriggerLimitIntervalSec=0"):
        assert line in text.splitlines()


def load_config_default_socket() -> str:
    return str(Config(dropbox=Path("/srv/dropbox")).socket)


def test_sysusers_and_tmpfiles_make_accounts_and_folders(tmp_path: Path) -> None:
    need_root()
    sysusers, tmpfiles = need_tool("systemd-sysusers"), need_tool("systemd-tmpfiles")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    run(sysusers, "--root", root, UNIT_DIR / "sysusers.d" / "dittohead.conf")
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").open()}
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").open()}
    assert {"dittohead", "dittohead-collectors"} <= set(groups)
    user = passwd["dittohead"]
    assert user[3] == groups["dittohead"][2]  # primary group dittohead
    assert user[6].strip() == "/usr/sbin/nologin"
    assert "dittohead" not in groups["dittohead-collectors"][3]
    run(tmpfiles, "--create", "--root", root, UNIT_DIR / "tmpfiles.d" / "dittohead.conf")
    uid = int(user[2])
    for rel, mode, owner in [
        ("run/dittohead", 0o755, 0),
        ("var/lib/dittohead", 0o700, uid),
        ("srv/dittohead", 0o755, 0),
        ("etc/dittohead", 0o755, 0),
    ]:
        st = (root / rel).stat()
        assert (st.st_mode & 0o7777, st.st_uid) == (mode, owner), rel


# -- a deployment with real accounts ---------------------------------------------------------


@dataclass
class Site:
    base: Path
    python: Path
    accounts: Accounts
    collectors: str
    collector: str
    service: str

    @property
    def config_path(self) -> Path:
        return self.base / "etc" / "dittohead.yaml"

    @property
    def server(self) -> Server:
        return Server(self.base, self.config_path, load_config(self.config_path))

    def as_user(self, user: str, action: Callable[[], object]) -> None:
        """Run `action` in a child process with `user`'s real uid, gid and groups."""
        pw = pwd.getpwnam(user)
        groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.setgroups(groups)
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
                os.umask(0o007)  # the receiver makes entries 2770 so the processor may move them
                action()
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, f"action as {user} failed"


def _write_config(site: Site, idle: float, uploaders: list[str] | None = None) -> None:
    dest = site.base / "study" / STUDY / "raw-dittohead"
    studies = {STUDY: (dest, uploaders or [site.collectors])}
    doc = config_doc(site.base, site.service, studies, processor={"idle_timeout": idle})
    write_config(site.config_path, doc)
    site.config_path.chmod(0o644)


@pytest.fixture
def site() -> Iterator[Site]:
    need_root()
    # Not pytest's tmp_path: its parents are 0700 and the real users must get through.
    base = Path(tempfile.mkdtemp(prefix="dittohead-systemd-", dir="/tmp"))
    # The harness's accounts, config and folders, without its sshd; then this tier's config.
    setup = deployment(base, sshd=False)
    try:
        dep = next(setup)
        s = Site(
            base=base,
            python=dep.python,
            accounts=dep.accounts,
            collectors=dep.collectors,
            collector=dep.collector,
            service=dep.service,
        )
        _write_config(s, idle=1.5)
        init = run(s.python, "-I", "-m", "dittohead.receiver.admin", "init",
                   "--config", s.config_path, check=False)  # fmt: skip
        assert init.returncode == 0, init.stderr
        yield s
    finally:
        setup.close()
        shutil.rmtree(base, ignore_errors=True)


def _own_socket(path: Path, site: Site) -> None:
    """What the socket unit's SocketUser=/SocketGroup=/SocketMode= do."""
    os.chown(path, pwd.getpwnam(site.service).pw_uid, grp.getgrnam(site.collectors).gr_gid)
    path.chmod(0o660)


def _poke(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(b"poke\n")


@pytest.mark.slow
def test_socket_activation_finalizes_and_reports(site: Site) -> None:
    activate = need_tool("systemd-socket-activate")
    server = site.server
    sock_path = server.config.socket
    sock_path.parent.mkdir(mode=0o755)
    notify_path = site.base / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    os.chown(notify_path, pwd.getpwnam(site.service).pw_uid, -1)
    files = {f"eprime/s{i:02}.txt": f"subject {i}\n".encode() for i in range(20)}
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="1000000")
    proc = subprocess.Popen(
        [
            activate, "-l", str(sock_path), "--fdname=processor",
            "-E", "NOTIFY_SOCKET", "-E", "WATCHDOG_USEC",
            "setpriv", f"--reuid={site.service}", f"--regid={site.service}", "--init-groups",
            str(site.python), "-I", "-m", "dittohead.receiver.processor.service",
            "--config", str(site.config_path), "-v",
        ],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    messages: list[str] = []
    try:
        deadline = time.monotonic() + 10
        while not sock_path.exists():
            assert time.monotonic() < deadline, "systemd-socket-activate did not bind"
            time.sleep(0.05)
        _own_socket(sock_path, site)
        assert proc.poll() is None
        # The collector commits an entry by hand (what the receiver leaves), then pokes.
        site.as_user(site.collector, lambda: server.commit(files))
        name = next(p.name for p in server.inbox.iterdir())
        site.as_user(site.collector, lambda: _poke(sock_path))
        notify.settimeout(1.0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "STOPPING=1" not in messages:
            try:
                messages += notify.recv(4096).decode().split("\n")
            except TimeoutError:
                continue
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
        notify.close()
    assert proc.returncode == 0, output
    assert messages[0] == "READY=1", messages
    assert messages[-1] == "STOPPING=1", messages
    statuses = [m for m in messages if m.startswith("STATUS=")]
    assert f"STATUS=verifying {STUDY} {name}" in statuses, statuses
    assert f"STATUS=finalizing {STUDY} {name}: 0/20 files" in statuses, statuses
    assert any("finalized 1 uploads (20 stored" in m for m in statuses), statuses
    assert "WATCHDOG=1" in messages
    # Stored by the service account, as the collector sent them.
    svc_uid = pwd.getpwnam(site.service).pw_uid
    for rel, data in files.items():
        stored = server.destination / rel
        assert stored.read_bytes() == data
        assert stored.stat().st_uid == svc_uid
    assert (server.config.study_dir(STUDY) / "done" / name).is_dir()
    assert f"poke from uid {pwd.getpwnam(site.collector).pw_uid}" in output


# -- dittohead-admin check -----------------------------------------------------------------


@dataclass
class Checked:
    site: Site
    sshd_config: Path
    block: str
    listener: socket.socket

    @property
    def units(self) -> Path:
        return self.site.base / "units"

    def check(self, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
        code = cli.main(
            ["check", "--config", str(self.site.config_path), "--sshd-config",
             str(self.sshd_config), "--unit-dir", str(self.units)]
        )  # fmt: skip
        return code, capsys.readouterr().out

    def write_sshd(self, block: str) -> None:
        self.sshd_config.write_text(f"HostKey {self.site.base / 'hostkey'}\nUsePAM no\n{block}")


@pytest.fixture
def checked(site: Site) -> Iterator[Checked]:
    require(Path("/usr/sbin/sshd").exists(), "openssh-server is not installed")
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", site.base / "hostkey")
    Path("/run/sshd").mkdir(exist_ok=True)
    block = run(site.python, "-I", "-m", "dittohead.receiver.admin", "sshd-config",
                "--config", site.config_path).stdout  # fmt: skip
    path = site.server.config.socket
    path.parent.mkdir(mode=0o755)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    _own_socket(path, site)
    state = Checked(site, site.base / "sshd_config", block, listener)
    state.write_sshd(block)
    # The shipped units, plus the drop-in an admin writes for this site's folders.
    shutil.copytree(UNIT_DIR, state.units, ignore=shutil.ignore_patterns("*.d"))
    (state.units / "dittohead-.service.d").mkdir()
    (state.units / "dittohead-.service.d" / "site.conf").write_text(
        f"[Service]\nReadWritePaths={site.base / 'dropbox'} {site.base / 'state'}\n"
        f"ReadWritePaths={site.server.destination}\n"
    )
    try:
        yield state
    finally:
        listener.close()


def test_check_passes_a_good_deployment(
    checked: Checked, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = checked.check(capsys)
    assert code == 0, out
    assert out.startswith("ok:")
    # No file-system line: the local file system offers every primitive, and the ok line says so.
    assert out.count("\n") == 1
    assert out.rstrip().endswith("every file system offers the native primitives and fcntl locks")


def _dir(c: Checked, *rel: str) -> Path:
    return c.site.server.config.study_dir(STUDY).joinpath(*rel)


def _destination(c: Checked) -> Path:
    return c.site.server.destination


BREAKS: dict[str, tuple[Callable[[Checked], object], Callable[[Checked], str], str]] = {
    "inbox open to all": (
        lambda c: _dir(c, "inbox").chmod(0o777),
        lambda c: str(_dir(c, "inbox")),
        "chmod 3773",
    ),
    "processing owned by root": (
        lambda c: os.chown(_dir(c, "processing"), 0, 0),
        lambda c: str(_dir(c, "processing")),
        "chown",
    ),
    "done folder missing": (
        lambda c: _dir(c, "done").rmdir(),
        lambda c: str(_dir(c, "done")),
        "dittohead-admin init",
    ),
    "destination without setgid": (
        lambda c: _destination(c).chmod(0o755),
        lambda c: str(_destination(c)),
        "chmod 2750",
    ),
    "destination owned by root": (
        lambda c: os.chown(_destination(c), 0, -1),
        lambda c: str(_destination(c)),
        "chown",
    ),
    "service account is an uploader": (
        lambda c: run("usermod", "-aG", c.site.collectors, c.site.service),
        lambda c: f"user {c.site.service}",
        "gpasswd -d",
    ),
    "uploader group missing": (
        lambda c: _write_config(c.site, 1.5, [c.site.collectors, c.site.accounts.prefix + "x"]),
        lambda c: f"group {c.site.accounts.prefix}x",
        "groupadd",
    ),
    "no ForceCommand": (
        lambda c: c.write_sshd(""),
        lambda c: str(c.sshd_config),
        "sshd-config",
    ),
    "TTYs allowed": (
        lambda c: c.write_sshd(c.block.replace("PermitTTY no", "PermitTTY yes")),
        lambda c: str(c.sshd_config),
        "PermitTTY",
    ),
    "forwarding allowed": (
        lambda c: c.write_sshd(
            c.block.replace("DisableForwarding yes", "DisableForwarding no").replace(
                "AllowTcpForwarding no", "AllowTcpForwarding yes"
            )
        ),
        lambda c: str(c.sshd_config),
        "forwarding",
    ),
    "destination not writable under the units": (
        lambda c: (c.units / "dittohead-.service.d" / "site.conf").write_text(
            f"[Service]\nReadWritePaths={c.site.base / 'dropbox'} {c.site.base / 'state'}\n"
        ),
        lambda c: str(_destination(c)),
        "ReadWritePaths=",
    ),
    "socket missing": (
        lambda c: c.site.server.config.socket.unlink(),
        lambda c: str(c.site.server.config.socket),
        "dittohead-processor.socket",
    ),
    "collectors cannot poke": (
        lambda c: os.chown(c.site.server.config.socket, -1, grp.getgrnam(c.site.service).gr_gid),
        lambda c: str(c.site.server.config.socket),
        "usermod -aG",
    ),
}


@pytest.mark.parametrize("broken", list(BREAKS))
def test_check_names_each_broken_setting(
    checked: Checked, capsys: pytest.CaptureFixture[str], broken: str
) -> None:
    breaker, where, fix = BREAKS[broken]
    breaker(checked)
    code, out = checked.check(capsys)
    assert code == 1, out
    lines = [line for line in out.splitlines() if line.startswith(where(checked))]
    assert lines, out
    assert any(fix in line for line in lines), out


def test_sigterm_while_idle_stops_at_once(tmp_path: Path) -> None:
    """SIGTERM must not wait out the idle timeout (PEP 475 retries select() after a handler;
    the service wakes itself through signal.set_wakeup_fd)."""
    activate = need_tool("systemd-socket-activate")
    server = make_server(tmp_path)
    doc = yaml.safe_load(server.config_path.read_text())
    doc["processor"] = {"idle_timeout": 120}
    server.config_path.write_text(yaml.safe_dump(doc))
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(20)
    sock_path = tmp_path / "p.sock"
    proc = subprocess.Popen(
        [activate, "-l", str(sock_path), "-E", "NOTIFY_SOCKET",
         sys.executable, "-m", "dittohead.receiver.processor.service",
         "--config", str(server.config_path)],
        env=dict(os.environ, NOTIFY_SOCKET=str(notify_path)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not sock_path.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _poke(sock_path)
        messages: list[str] = []
        while not any(m.startswith("STATUS=idle") for m in messages):
            messages.append(notify.recv(4096).decode())
        started = time.monotonic()
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        # (The poke may still be answered by a second pass before the signal lands.)
        while messages[-1] != "STOPPING=1":
            messages.append(notify.recv(4096).decode())
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()


def _expand(tool: str, group: str) -> set[str]:
    """The system calls in a `systemd-analyze syscall-filter` group, nested groups expanded."""
    out = run(tool, "syscall-filter", group).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        names |= _expand(tool, item) if item.startswith("@") else {item}
    return names


def unit_syscall_filter(tool: str, unit: str) -> set[str]:
    """What the unit's SystemCallFilter= lines allow (an allow list, then `~` deny lists)."""
    allowed: set[str] = set()
    for line in (UNIT_DIR / unit).read_text().splitlines():
        if not line.startswith("SystemCallFilter="):
            continue
        value = line.split("=", 1)[1]
        deny = value.startswith("~")
        names: set[str] = set()
        for item in value.lstrip("~").split():
            names |= _expand(tool, item) if item.startswith("@") else {item}
        allowed = allowed - names if deny else allowed | names
    return allowed


@pytest.mark.slow
def test_a_full_pass_stays_inside_the_units_syscall_filter(tmp_path: Path) -> None:
    """Every system call a `--once` pass makes (traced with strace, children included) is one
    the unit's SystemCallFilter= allows, so the filter cannot kill a real run."""
    tool = need_tool("systemd-analyze")
    strace = need_tool("strace")
    server = make_server(tmp_path / "srv")
    server.commit({"eprime/s01.txt": b"one", "biopac/deep/s01.acq": b"\0" * 70_000})
    server.commit({"eprime/s01.txt": b"two"})  # a second version: the ~2 naming path
    server.commit({"eprime/s01.txt": b"one"})  # a duplicate
    # Enough files for the background syncfs of the copies (a thread: clone3, futex, ...).
    many = _SYNC_AHEAD_FILES
    server.commit({f"trials/t{i:05d}.txt": b"%d" % i for i in range(many)})
    trace = tmp_path / "trace"
    processor = Path(sys.prefix) / "bin" / "dittohead-processor"
    result = run(strace, "-f", "-qq", "-o", trace, processor, "--once",
                 "--config", server.config_path, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(list(server.destination.rglob("s01*"))) == 3
    used = {
        m[1]
        for line in trace.read_text().splitlines()
        if (m := re.match(r"^\d+\s+([a-z0-9_]+)\(", line))
    }
    assert {"renameat2", "syncfs", "mkdirat"} <= used  # the trace saw the real work
    assert {"clone", "clone3"} & used  # and the background syncfs thread
    allowed = unit_syscall_filter(tool, "dittohead-processor.service")
    assert not {"mount", "setrlimit", "ptrace", "chroot", "setuid"} & allowed  # the denials bite
    assert used - allowed == set()
    assert unit_syscall_filter(tool, "dittohead-rescan.service") == allowed
