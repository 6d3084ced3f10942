"""A study the service account cannot reach, with real users and real permissions (issue 23).

The admin made a destination's parent ``2750 root:<study group>`` without the service account
in that group: ``check`` must name that parent (judged as the service account: its uid and
groups, in a child that switched to them), and the processor, run as the service account, must
give one line for that study and still finalize another study's upload. Also the processor
started by hand where tmpfiles made its socket folder for root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Deployment, deployment, require
from tests.integration.test_processor_hostile import BUILD, as_user, entry_name

pytestmark = [pytest.mark.root]


@pytest.fixture
def dep() -> Iterator[Deployment]:
    require(shutil.which("setpriv") is not None, "setpriv (util-linux) is not installed")
    # Not under pytest's tmp dir: that lives below a 0700 folder the accounts cannot cross.
    base = Path(tempfile.mkdtemp(prefix="dittohead-reach-"))
    try:
        yield from deployment(base, sshd=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def upload(dep: Deployment, user: str, study: str, files: dict[str, str]) -> str:
    name = entry_name()
    inbox = dep.base / "dropbox" / study / "inbox"
    doc = {"inbox": str(inbox), "name": name, "files": files}
    done = as_user(dep, user, str(dep.python), "-I", "-c", BUILD, json.dumps(doc), timeout=30)
    assert done.returncode == 0, done.stderr
    time.sleep(0.01)
    return name


def as_service(dep: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "setpriv", f"--reuid={dep.service}", f"--regid={dep.service}", "--init-groups",
            str(dep.python), "-I", "-m", "dittohead.receiver.processor.service",
            "--config", str(dep.config_path), *args,
        ],
        check=False, text=True, capture_output=True, timeout=60,
    )  # fmt: skip


def test_a_destination_the_service_cannot_reach_costs_only_its_study(dep: Deployment) -> None:
    parent = dep.destination.parent
    runners = dep.accounts.group("run")  # the study runners' group; the service is not in it
    os.chown(parent, 0, int(subprocess.check_output(["getent", "group", runners]).split(b":")[2]))
    parent.chmod(0o2750)
    blocked = upload(dep, dep.collector, dep.study, {"a.txt": "waits for the admin"})
    other = upload(dep, dep.outsider, "other", {"b.txt": "flows all the same"})

    check = dep.admin("check")
    assert check.returncode == 1
    [line] = [x for x in check.stdout.splitlines() if x.startswith(f"{parent}:")]
    assert f"{dep.service} may not pass through this folder (mode 2750, root:{runners})" in line
    assert f"study {dep.study}'s destination {dep.destination}" in line
    assert f"setfacl -m u:{dep.service}:x {parent}" in line and f"chmod o+x {parent}" in line

    result = as_service(dep, "--once")
    assert result.returncode == 70, result.stderr
    assert "Traceback" not in result.stderr
    errors = [x for x in result.stderr.splitlines() if x.startswith("ERROR")]
    assert len(errors) == 1 and f"{dep.study}: the processor may not reach" in errors[0]
    assert str(dep.destination) in errors[0] and "dittohead-admin check" in errors[0]
    assert result.stderr.splitlines()[-1].startswith(
        f"dittohead: 1 study could not be worked on in this pass ({dep.study})"
    )
    assert (dep.base / "study" / "other" / "raw" / "b.txt").read_text() == "flows all the same"
    assert (dep.base / "dropbox" / "other" / "done" / other).is_dir()
    assert (dep.inbox / blocked).is_dir()  # untouched, waiting

    parent.chmod(0o2751)  # the fix check named
    again = dep.admin("check")
    assert not [x for x in again.stdout.splitlines() if x.startswith(f"{parent}:")]
    result = as_service(dep, "--once")
    assert result.returncode == 0, result.stderr
    assert (dep.destination / "a.txt").read_text() == "waits for the admin"


def test_serving_by_hand_where_the_socket_folder_is_roots_says_what_to_do(
    dep: Deployment,
) -> None:
    run = dep.base / "run"  # the config's socket folder, as tmpfiles makes /run/dittohead
    run.mkdir(mode=0o755, exist_ok=True)
    run.chmod(0o755)
    result = as_service(dep)
    assert result.returncode == 71
    [line] = result.stderr.splitlines()
    assert line.startswith(f"dittohead: cannot listen on {run / 'processor.sock'} ")
    assert "Permission denied" in line
    assert "systemctl enable --now dittohead-processor.socket" in line and "--once" in line
