"""Real-world test harness: Unix users, a deployment other users can run, a private sshd.

Everything here is real: users and groups made with useradd/groupadd (removed afterwards), an
OpenSSH sshd on 127.0.0.1 with the ``Match Group`` + ``ForceCommand`` block printed by
``dittohead-admin sshd-config``, the receiver running as the collector, the processor as its
own service account. Needs root; under CI a missing prerequisite fails instead of skipping.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import config_doc, write_config

SSHD = Path("/usr/sbin/sshd")
REPO = Path(__file__).resolve().parents[2]


def require(condition: bool, why: str) -> None:
    """Skip on a developer's machine, fail in CI: a tier that can run in CI must run there."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is missing a prerequisite: {why}")
    pytest.skip(why)


def run(*argv: str | Path, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(a) for a in argv], check=check, text=True, capture_output=True, **kw
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Accounts:
    """Throwaway users and groups; `close` removes them."""

    prefix: str = field(default_factory=lambda: "dh" + secrets.token_hex(3))
    users: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def group(self, role: str) -> str:
        name = f"{self.prefix}{role}"
        run("groupadd", name)
        self.groups.append(name)
        return name

    def user(
        self, role: str, home: Path, groups: tuple[str, ...] = (), system: bool = False
    ) -> str:
        name = f"{self.prefix}{role}"
        argv = ["useradd", "--create-home", "--home-dir", str(home / name), "--shell", "/bin/bash"]
        if groups:
            argv += ["--groups", ",".join(groups)]
        if system:
            argv += ["--user-group"]
        run(*argv, name)
        self.users.append(name)
        # A usable password: sshd refuses locked ("!") accounts even for key logins.
        run("chpasswd", input=f"{name}:{name}-pw\n")
        return name

    def close(self) -> None:
        for name in self.users:
            run("pkill", "-u", name, check=False)
            run("userdel", "--force", name, check=False)
        for name in self.groups:
            run("groupdel", name, check=False)


def reachable_python(base: Path) -> Path:
    """An interpreter with dittohead importable that unprivileged users can execute.

    The test venv is used as it is when other users can reach it; otherwise (a checkout under a
    private home) the venv and the source roots are copied below `base`.
    """
    venv = Path(sys.prefix)
    probe = run(
        "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
        venv / "bin" / "python", "-I", "-c", "import dittohead.receiver.upload.receive",
        check=False,
    )  # fmt: skip
    if probe.returncode == 0:
        return venv / "bin" / "python"
    copy = base / "venv"
    shutil.copytree(venv, copy, symlinks=True)
    src = base / "src"
    for root in ("core", "client", "receiver"):
        shutil.copytree(REPO / root, src / root)
    for pth in copy.glob("lib/python3*/site-packages/_dittohead.pth"):
        pth.write_text("".join(f"{src / root}\n" for root in ("core", "client", "receiver")))
    python = copy / "bin" / "python"
    again = run(
        "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
        python, "-I", "-c", "import dittohead.receiver.upload.receive", check=False,
    )  # fmt: skip
    require(
        again.returncode == 0,
        "the test venv's interpreter is not executable by other users "
        f"(build .venv on the system python3, as 'make test' does): {again.stderr.strip()}",
    )
    return python


@dataclass
class Deployment:
    """A dittohead server laid out as an admin would, plus an sshd in front of it."""

    base: Path
    python: Path
    accounts: Accounts
    collectors: str  # the uploaders' group
    other_collectors: str  # uploaders of another study
    collector: str
    outsider: str
    service: str  # the processor's account
    study: str = "nccam3"
    port: int = 0
    sshd: subprocess.Popen[str] | None = None

    @property
    def config_path(self) -> Path:
        return self.base / "etc" / "dittohead.yaml"

    @property
    def destination(self) -> Path:
        return self.base / "study" / self.study / "raw-dittohead"

    @property
    def inbox(self) -> Path:
        return self.base / "dropbox" / self.study / "inbox"

    def key(self, user: str) -> Path:
        return self.base / "keys" / user

    @property
    def known_hosts(self) -> Path:
        return self.base / "known_hosts"

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(self.python, "-I", "-m", "dittohead.receiver.admin", *args,
                   "--config", self.config_path, check=False)  # fmt: skip

    def process(self) -> subprocess.CompletedProcess[str]:
        """``dittohead-processor --once`` as the service account."""
        return run(
            "setpriv", f"--reuid={self.service}", f"--regid={self.service}", "--init-groups",
            self.python, "-I", "-m", "dittohead.receiver.processor.service", "--once",
            "--config", self.config_path, check=False,
        )  # fmt: skip

    def send(
        self,
        user: str,
        folder: Path,
        *extra: str,
        state: Path | None = None,
        ssh: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``dittohead send`` over the real sshd, logging in as `user` with their key.

        `ssh` is ``DITTOHEAD_SSH`` for the client: None leaves it to find OpenSSH's ``ssh``,
        ``"builtin"`` makes it use asyncssh alone."""
        env = {k: v for k, v in os.environ.items() if k != "DITTOHEAD_SSH"}
        if ssh is not None:
            env["DITTOHEAD_SSH"] = ssh
        return run(
            self.python, "-I", "-m", "dittohead.client.cli", "send",
            "--host", "127.0.0.1", "--port", str(self.port), "--user", user,
            "--identity", self.key(user), "--known-hosts", self.known_hosts,
            "--state", state or (self.base / f"state-{user}.json"),
            "--study", self.study, "--source", "brogden-a", "--json", *extra, folder,
            check=False, env=env,
        )  # fmt: skip

    def ssh(self, user: str, *command: str) -> subprocess.CompletedProcess[str]:
        return run(
            "ssh", "-F", "none", "-p", str(self.port), "-i", self.key(user),
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", f"{user}@127.0.0.1", *command,
            check=False, timeout=60,
        )  # fmt: skip


def _write_config(dep: Deployment) -> None:
    (dep.base / "etc").mkdir()
    (dep.base / "study" / dep.study).mkdir(parents=True)
    (dep.base / "study" / "other").mkdir(parents=True)
    write_dep_config(dep)


def write_dep_config(dep: Deployment, **extra: Any) -> None:
    """The deployment's YAML (again), with `extra` top-level keys (``limits={...}``); run
    ``dep.admin("check")`` after a change, as an admin would."""
    studies = {
        dep.study: (dep.destination, [dep.collectors]),
        "other": (dep.base / "study" / "other" / "raw", [dep.other_collectors]),
    }
    write_config(dep.config_path, config_doc(dep.base, dep.service, studies, **extra))


def _start_sshd(dep: Deployment) -> None:
    keys = dep.base / "keys"
    keys.mkdir(mode=0o755)
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / "host")
    for user in (dep.collector, dep.outsider):
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / user)
        # The collector's own copy of their key (the client reads it as root here).
        (keys / f"{user}.authorized").write_text((keys / f"{user}.pub").read_text())
    host_pub = (keys / "host.pub").read_text().split()
    dep.port = free_port()
    dep.known_hosts.write_text(f"[127.0.0.1]:{dep.port} {host_pub[0]} {host_pub[1]}\n")
    match_block = dep.admin("sshd-config")
    assert match_block.returncode == 0, match_block.stderr
    sshd_config = dep.base / "sshd_config"
    sshd_config.write_text(
        "\n".join(
            [
                f"Port {dep.port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {keys / 'host'}",
                f"PidFile {dep.base / 'sshd.pid'}",
                f"AuthorizedKeysFile {keys}/%u.authorized",
                "StrictModes no",  # the test tree lives under /tmp, which is world-writable
                "UsePAM no",
                "PasswordAuthentication yes",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "Subsystem sftp internal-sftp",
                "LogLevel VERBOSE",
                match_block.stdout,
            ]
        )
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    check = run(SSHD, "-t", "-f", sshd_config, check=False)
    assert check.returncode == 0, f"sshd -t refused the generated config: {check.stderr}"
    log = (dep.base / "sshd.log").open("w")
    dep.sshd = subprocess.Popen(
        [str(SSHD), "-D", "-e", "-f", str(sshd_config)], stdout=log, stderr=log, text=True
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", dep.port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"sshd did not start: {(dep.base / 'sshd.log').read_text()}")


def deployment(tmp_root: Path, *, sshd: bool = True) -> Generator[Deployment, None, None]:
    """A deployment under `tmp_root`; without `sshd`, only the users, config and folders
    (for tests that drive the processor directly as the real accounts)."""
    require(os.geteuid() == 0, "the sshd tier needs root (users, groups, sshd)")
    if sshd:
        require(SSHD.exists(), "openssh-server is not installed (make test installs it as root)")
        require(shutil.which("ssh") is not None, "openssh-client is not installed")
    base = Path(tmp_root)
    base.chmod(0o755)
    accounts = Accounts()
    try:
        homes = base / "home"
        homes.mkdir(mode=0o755)
        collectors = accounts.group("coll")
        # The outsider collects for another study: sshd forces the receiver on them too, and
        # the receiver (then the processor) must refuse them for this one.
        others = accounts.group("oth")
        collector = accounts.user("alice", homes, (collectors,))
        outsider = accounts.user("mallory", homes, (others,))
        service = accounts.user("svc", homes, system=True)
        dep = Deployment(
            base=base,
            python=reachable_python(base),
            accounts=accounts,
            collectors=collectors,
            other_collectors=others,
            collector=collector,
            outsider=outsider,
            service=service,
        )
        _write_config(dep)
        init = dep.admin("init")
        assert init.returncode == 0, init.stderr
        if sshd:
            _start_sshd(dep)
        yield dep
    finally:
        if "dep" in locals() and dep.sshd is not None:
            dep.sshd.terminate()
            dep.sshd.wait(timeout=10)
        accounts.close()
