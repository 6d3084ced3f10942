"""The packages `make packages` writes: built, linted, installed into a fresh Debian 12 root.

Real components: nfpm (the build), lintian and rpmlint, mmdebstrap (one bookworm root per
session, through the machine's apt sources; every test works on its own copy), dpkg inside
that root, and rpm --root into a copy of it (an empty rpm database; --nodeps only because the
root's dependencies are Debian packages, which rpm cannot see). The rpm's scriptlets run for
real there: rpm runs them chrooted into the root, which has python3.11 and systemd's tools.
Not exercised: systemctl against a running systemd (nothing runs in a chroot; the scripts
only call it when /run/systemd/system exists) and a real EL9 (python3.11 from AppStream).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.packaging, pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NEW, OLD = "0.1.0", "0.0.9"
# what the packages depend on (dpkg -i installs no dependencies): python3-tk for dittohead-gui
BASE_DEBS = "python3.11,python3-tk,systemd,openssh-client"
CONFIG = """\
dropbox: /srv/dittohead
studies:
  s1:
    destination: /study/s1/raw
    uploaders: [s1-collectors]
"""


def scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        result: dict[str, str] = tomllib.load(f)["project"]["scripts"]
    return result


def run(*argv: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    if ok:
        assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both versions' packages; the older one's example config differs (a conffile conflict)."""
    out = tmp_path_factory.mktemp("dist")
    example = out / "old-dittohead.yaml"
    example.write_text((ROOT / "packaging/dittohead.yaml").read_text() + "# as 0.0.9 shipped it\n")
    build: list[str | Path] = [sys.executable, ROOT / "packaging/build.py"]
    run(*build, "--version", NEW, "--out", out / "new")
    run(*build, "--version", OLD, "--out", out / "old", "--example-config", example)
    found = {}
    for tag in ("new", "old"):
        for kind in ("server", "client"):
            found[f"{kind}-{tag}"] = next((out / tag).glob(f"dittohead-{kind}_*.deb"))
            found[f"{kind}-{tag}-rpm"] = next((out / tag).glob(f"dittohead-{kind}-*.rpm"))
    return found


@pytest.fixture(scope="session")
def bookworm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh Debian 12 root with the packages' dependencies (once per session, ~60 s)."""
    if shutil.which("mmdebstrap") is None:
        pytest.fail("mmdebstrap is missing (make test installs it: TEST_DEBS)")
    base = tmp_path_factory.mktemp("bookworm") / "root"
    run(
        "mmdebstrap", "--variant=apt", "--quiet",
        "--aptopt=Acquire::Check-Valid-Until \"false\"",
        f"--include={BASE_DEBS}",
        "--dpkgopt=path-exclude=/usr/share/{man,locale}/*",
        "bookworm", base, "/etc/apt/sources.list.d/debian.sources",
    )  # fmt: skip
    return base


@pytest.fixture
def chroot(bookworm: Path, tmp_path: Path) -> Iterator[Path]:
    """This test's own copy of the root, with /proc (systemd-tmpfiles needs it)."""
    root = tmp_path / "root"
    run("cp", "-a", "--reflink=auto", bookworm, root)
    run("mount", "-t", "proc", "proc", root / "proc")
    try:
        yield root
    finally:
        run("umount", "-l", root / "proc", ok=False)


def inside(root: Path, *argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive"]
    return run("chroot", root, *env, *argv, ok=ok)


def dpkg(root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    argv = []
    for arg in args:
        if isinstance(arg, Path):
            shutil.copy2(arg, root / "tmp" / arg.name)
        argv.append(f"/tmp/{arg.name}" if isinstance(arg, Path) else arg)
    return inside(root, "dpkg", "--force-confdef", "--force-confold", *argv)


def test_lintian_and_rpmlint_find_no_errors(dist: dict[str, Path]) -> None:
    debs = [dist["server-new"], dist["client-new"]]
    result = run("lintian", "--fail-on", "error", *debs)
    assert "E: " not in result.stdout
    rpms = [dist["server-new-rpm"], dist["client-new-rpm"]]
    result = run("rpmlint", "-c", ROOT / "packaging/rpmlint.toml", *rpms)
    assert " 0 errors" in result.stdout


def test_commands_come_from_project_scripts(dist: dict[str, Path]) -> None:
    listing = run("dpkg-deb", "-c", dist["server-new"]).stdout
    listing += run("dpkg-deb", "-c", dist["client-new"]).stdout
    for command in scripts():
        assert f"./usr/bin/{command}\n" in listing
    client = run("dpkg-deb", "-f", dist["client-new"], "Depends").stdout
    assert ("python3-tk" in client) == ("dittohead-gui" in scripts())


def test_install_runs_every_command_and_enables_nothing(
    dist: dict[str, Path], chroot: Path
) -> None:
    dpkg(chroot, "-i", dist["server-new"], dist["client-new"])
    assert "dittohead:x:" in (chroot / "etc/passwd").read_text()
    assert "dittohead-collectors:" in (chroot / "etc/group").read_text()
    state = (chroot / "var/lib/dittohead").stat()
    assert (state.st_mode & 0o777, state.st_uid != 0) == (0o700, True)
    venv = chroot / "opt/dittohead/venv"
    assert venv.is_symlink() and (venv / "bin/python").exists()
    # Collectors run the receiver from the venv: nothing in it may be writable by them.
    for path in venv.resolve().rglob("*"):
        if not path.is_symlink():
            assert path.stat().st_mode & 0o022 == 0, path
    assert not list((chroot / "etc/systemd/system").rglob("dittohead*"))
    assert (chroot / "usr/share/doc/dittohead-server/admins/README.md").is_file()
    for command in scripts():
        result = inside(chroot, command, "--help")
        assert result.stderr == "", command

    (chroot / "study/s1").mkdir(parents=True)
    inside(chroot, "groupadd", "s1-collectors")
    (chroot / "etc/dittohead/t.yaml").write_text(CONFIG)
    dropin = chroot / "etc/systemd/system/dittohead-.service.d"
    dropin.mkdir(parents=True)
    (dropin / "destinations.conf").write_text("[Service]\nReadWritePaths=/study/s1/raw\n")
    init = inside(chroot, "dittohead-admin", "init", "--config", "/etc/dittohead/t.yaml")
    assert init.stderr == "" and "/study/s1/raw" in init.stdout
    check = inside(
        chroot, "dittohead-admin", "check", "--config", "/etc/dittohead/t.yaml", ok=False
    )
    # The one thing a chroot cannot have: systemd listening on the socket.
    assert check.stderr == ""
    assert check.stdout.splitlines()[:-1] == [
        line for line in check.stdout.splitlines()[:-1] if "no processor socket here" in line
    ]
    assert check.stdout.endswith("1 problem(s) found\n")
    sshd = inside(chroot, "dittohead-admin", "sshd-config", "--config", "/etc/dittohead/t.yaml")
    assert sshd.stderr == ""
    assert "ForceCommand /opt/dittohead/venv/bin/python -I -X utf8 -m dittohead.receiver." in (
        sshd.stdout
    )
    # The shipped example is a valid configuration as it stands.
    assert inside(chroot, "dittohead-admin", "init").stderr == ""


def test_upgrade_keeps_changed_config_and_data_and_removal_keeps_data(
    dist: dict[str, Path], chroot: Path
) -> None:
    dpkg(chroot, "-i", dist["server-old"])
    conffile = chroot / "etc/dittohead/dittohead.yaml"
    conffile.write_text(conffile.read_text() + "# the admin's edit\n")
    (chroot / "var/lib/dittohead/journal-marker").write_text("kept")
    old_tree = os.readlink(chroot / "opt/dittohead/venv")

    dpkg(chroot, "-i", dist["server-new"])
    assert conffile.read_text().endswith("# the admin's edit\n")
    assert (chroot / "var/lib/dittohead/journal-marker").read_text() == "kept"
    new_tree = os.readlink(chroot / "opt/dittohead/venv")
    assert new_tree.startswith(f"venv-{NEW}.")
    # The tree a running processor may still use stays until the next upgrade.
    assert (chroot / "opt/dittohead" / old_tree / "bin/python").exists()
    assert inside(chroot, "dittohead-admin", "--help").stderr == ""

    dpkg(chroot, "-r", "dittohead-server")
    assert not (chroot / "opt/dittohead").exists()
    assert conffile.is_file()
    dpkg(chroot, "--purge", "dittohead-server")
    assert not conffile.exists()
    assert (chroot / "var/lib/dittohead/journal-marker").read_text() == "kept"
    assert (chroot / "srv/dittohead").is_dir()
    assert "dittohead:x:" in (chroot / "etc/passwd").read_text()


def test_rpm_files_and_scriptlets(dist: dict[str, Path], chroot: Path) -> None:
    """rpm --root runs %post/%preun/%postun for real, chrooted into the Debian root."""
    rpm = ["rpm", "--root", str(chroot), "--nodeps"]
    run("rpm", "--root", chroot, "--initdb")
    server = dist["server-new-rpm"]
    listing = run("rpm", "-qplv", server).stdout
    assert all(" root     root " in line for line in listing.splitlines()), listing
    assert run("rpm", "-qpc", server).stdout.split() == ["/etc/dittohead/dittohead.yaml"]
    assert run("rpm", "-qp", "--requires", server).stdout.count("python3.11") == 1

    run(*rpm, "-i", dist["server-old-rpm"], dist["client-old-rpm"])
    assert "dittohead:x:" in (chroot / "etc/passwd").read_text()
    conffile = chroot / "etc/dittohead/dittohead.yaml"
    conffile.write_text(conffile.read_text() + "# the admin's edit\n")
    run(*rpm, "-U", server, dist["client-new-rpm"])
    assert conffile.read_text().endswith("# the admin's edit\n")
    assert os.readlink(chroot / "opt/dittohead/venv").startswith(f"venv-{NEW}.")
    for command in scripts():
        assert inside(chroot, command, "--help").stderr == "", command
    run(*rpm, "-e", "dittohead-server", "dittohead-client")
    assert not (chroot / "opt/dittohead").exists()
    assert not (chroot / "opt/dittohead-client").exists()
    assert (chroot / "var/lib/dittohead").is_dir()
