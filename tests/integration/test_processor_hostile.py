"""Hostile inbox entries built by real collector accounts, and a collector racing the processor.

Everything runs as the real users: entries are made by a Python snippet started with
``setpriv`` as the collector (a few objects a collector cannot make — a device node, a file
owned by a colleague — are made by root and given to them, as a compromised or careless
admin-side tool might), and the processor runs ``--once`` as its own service account. The
rules that depend on ownership (entry owner vs. uploader group, a foreign file inside an entry)
therefore meet real, different uids.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dittohead.receiver.processor.ledger import read_ledger
from tests.integration.harness import Deployment, deployment, require
from tests.support.invariants import dropbox_problems, tree_files, tree_problems

pytestmark = [pytest.mark.root]

# Run as a collector: build an entry from a JSON spec, then commit it (the rename).
BUILD = r"""
import hashlib, json, os, sys
spec = json.loads(sys.argv[1])
inbox, name = spec["inbox"], spec["name"]
staging = os.path.join(inbox, "." + name)
os.umask(0o007)  # the receiver's modes; setgid is inherited from the inbox (a chmod by a
os.mkdir(staging, 0o2770)  # non-member of the group would clear it)
entries = []
for rel, text in spec["files"].items():
    data = text.encode()
    path = os.path.join(staging, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    entries.append({"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
for op in spec.get("ops", []):
    kind, rel = op[0], os.path.join(staging, op[1])
    if kind == "symlink":
        os.symlink(op[2], rel)
    elif kind == "hardlink":
        os.link(os.path.join(staging, op[2]), rel)
    elif kind == "fifo":
        os.mkfifo(rel)
    elif kind == "chmod":
        os.chmod(rel, int(op[2], 8))
    elif kind == "write":
        with open(rel, "wb") as f:
            f.write(op[2].encode())
manifest = spec.get("manifest") or {
    "files": len(entries), "bytes": sum(e["size"] for e in entries), "entries": entries}
for entry in spec.get("list", []):
    manifest["entries"].append(entry)
manifest["files"] = len(manifest["entries"])
manifest["bytes"] = sum(e["size"] for e in manifest["entries"])
os.mkdir(os.path.join(staging, ".dittohead"))
with open(os.path.join(staging, ".dittohead", "manifest.json"), "w") as f:
    json.dump(manifest, f)
if spec.get("commit", True):
    os.rename(staging, os.path.join(inbox, name))
"""

# Run as the collector while the processor works: hold an fd of the committed entry (opened
# before the claim, so it survives the move into processing/) and keep swapping data.bin for a
# symlink to another study's file, and back, through that fd.
RACE = r"""
import os, sys, time
inbox, name, target, content, seconds, pause = sys.argv[1:7]
entry = os.open(os.path.join(inbox, name), os.O_RDONLY | os.O_DIRECTORY)
scratch_path = os.path.join(inbox, "." + name + "-scratch")
os.mkdir(scratch_path, 0o700)
scratch = os.open(scratch_path, os.O_RDONLY | os.O_DIRECTORY)
print("ready", flush=True)
end = time.monotonic() + float(seconds)
swaps = 0
while time.monotonic() < end:
    try:
        os.symlink(target, "evil", dir_fd=scratch)
        os.replace("evil", "data.bin", src_dir_fd=scratch, dst_dir_fd=entry)
        fd = os.open("good", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640, dir_fd=scratch)
        os.write(fd, content.encode())
        os.close(fd)
        os.replace("good", "data.bin", src_dir_fd=scratch, dst_dir_fd=entry)
        swaps += 1
        if float(pause):
            time.sleep(float(pause) * (swaps % 3))  # leave the honest file in place a while
    except OSError:
        for leftover in ("evil", "good"):
            try:
                os.unlink(leftover, dir_fd=scratch)
            except OSError:
                pass
print(swaps, flush=True)
"""


# Run as the collector: hold an fd of the committed entry, and on request take the group's write
# bit off it (after the processor has claimed it, when it can no longer be reached by path).
HOLD = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
print("ready", flush=True)
sys.stdin.readline()
os.fchmod(fd, 0o750)
print("done", flush=True)
"""


def entry_name(source: str = "brogden-a") -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{source}-{stamp}-{secrets.token_hex(8)}"


def as_user(dep: Deployment, user: str, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *argv],
        check=False,
        text=True,
        capture_output=True,
        **kw,
    )


def build(dep: Deployment, user: str, files: dict[str, str], **spec: Any) -> str:
    name = spec.pop("name", None) or entry_name()
    doc = {"inbox": str(dep.inbox), "name": name, "files": files, **spec}
    done = as_user(dep, user, str(dep.python), "-I", "-c", BUILD, json.dumps(doc), timeout=30)
    assert done.returncode == 0, done.stderr
    time.sleep(0.01)  # distinct commit times
    return name


def commit_as(dep: Deployment, user: str, name: str) -> None:
    done = as_user(
        dep, user, str(dep.python), "-I", "-c",
        "import os, sys; os.rename(sys.argv[1], sys.argv[2])",
        str(dep.inbox / f".{name}"), str(dep.inbox / name), timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def dep() -> Iterator[Deployment]:
    require(shutil.which("setpriv") is not None, "setpriv (util-linux) is not installed")
    # Not under pytest's tmp dir: that lives below a 0700 folder the collectors cannot cross.
    base = Path(tempfile.mkdtemp(prefix="dittohead-hostile-"))
    try:
        for deployment_ in deployment(base, sshd=False):
            # A second collector of the same study, for the ownership rules.
            deployment_.accounts.user("bob", base / "home", (deployment_.collectors,))
            yield deployment_
    finally:
        shutil.rmtree(base, ignore_errors=True)


def bob(dep: Deployment) -> str:
    return f"{dep.accounts.prefix}bob"


def process(dep: Deployment) -> subprocess.CompletedProcess[str]:
    """The processor as its service account, with a timeout: a FIFO must not make it hang."""
    return subprocess.run(
        [
            "setpriv", f"--reuid={dep.service}", f"--regid={dep.service}", "--init-groups",
            str(dep.python), "-I", "-m", "dittohead.receiver.processor.service", "--once",
            "--config", str(dep.config_path),
        ],
        check=False, text=True, capture_output=True, timeout=60,
    )  # fmt: skip


def study_dir(dep: Deployment) -> Path:
    return dep.base / "dropbox" / dep.study


def reason(dep: Deployment, name: str) -> str:
    path = study_dir(dep) / "quarantine" / f"{name}.reason"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    return path.read_text()


def test_hostile_entries_are_quarantined_or_left_alone_and_good_ones_flow(
    dep: Deployment,
) -> None:
    alice, mallory, svc = dep.collector, dep.outsider, dep.service
    quarantined: dict[str, str] = {}
    ok = {"ok.txt": "fine"}
    quarantined["symlink"] = build(dep, alice, ok, ops=[["symlink", "link.txt", "/etc/passwd"]])
    quarantined["hard link"] = build(
        dep, alice, {"a.txt": "same inode"}, ops=[["hardlink", "b.txt", "a.txt"]],
        list=[{"path": "b.txt", "size": 10, "sha256": hashlib.sha256(b"same inode").hexdigest()}],
    )  # fmt: skip
    quarantined["fifo"] = build(dep, alice, ok, ops=[["fifo", "pipe"]])
    quarantined["setuid"] = build(
        dep, alice, {"tool": "#!/bin/sh\n"}, ops=[["chmod", "tool", "4755"]]
    )
    quarantined["unreadable file"] = build(dep, alice, ok, ops=[["chmod", "ok.txt", "0600"]])
    quarantined["unreadable folder"] = build(
        dep, alice, {"d/s.txt": "in a closed folder"}, ops=[["chmod", "d", "0700"]]
    )
    quarantined["unlisted"] = build(dep, alice, ok, ops=[["write", "extra.txt", "not listed"]])
    quarantined["lying manifest"] = build(
        dep, alice, {"x.txt": "the truth"},
        manifest={"entries": [{"path": "x.txt", "size": 9, "sha256": "0" * 64}]},
    )  # fmt: skip
    # Objects a collector cannot make alone: root makes them inside alice's staging entry.
    device = build(dep, alice, ok, commit=False)
    os.mknod(dep.inbox / f".{device}" / "dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.chown(dep.inbox / f".{device}" / "dev", _uid(alice), -1)
    commit_as(dep, alice, device)
    quarantined["device"] = device
    foreign = build(dep, alice, {"mine.txt": "mine", "theirs.txt": "theirs"}, commit=False)
    os.chown(dep.inbox / f".{foreign}" / "theirs.txt", _uid(bob(dep)), -1)
    commit_as(dep, alice, foreign)
    quarantined["foreign owner"] = foreign
    # Left alone: an entry that cannot be moved (its owner took the group's write bit), an
    # outsider's entry, and things in the inbox that are not entries at all.
    outsider = build(dep, mallory, {"m.txt": "from elsewhere"})
    unmovable = build(dep, alice, ok, ops=[["chmod", ".", "2750"]])
    junk_link = entry_name()
    as_user(dep, alice, "ln", "-s", "/etc", str(dep.inbox / junk_link))
    junk_file = entry_name()
    as_user(dep, alice, "sh", "-c", f"echo hi > {dep.inbox / junk_file}")
    as_user(dep, alice, "mkdir", str(dep.inbox / "badly named"))
    # Good entries from both collectors in the same run.
    good_bob = build(dep, bob(dep), {"bob/s01.txt": "bob's data"})
    good_alice = build(dep, alice, {"alice/s01.txt": "alice's data"})

    result = process(dep)
    assert result.returncode == 0, result.stderr

    assert tree_files(dep.destination) == {
        "bob/s01.txt": b"bob's data",
        "alice/s01.txt": b"alice's data",
    }
    assert tree_problems(dep.destination) == []
    done = {p.name for p in (study_dir(dep) / "done").iterdir()}
    assert done == {good_bob, good_alice}
    expect = {
        "symlink": "not a regular file",
        "hard link": "hard links",
        "fifo": "not a regular file",
        "setuid": "set-id",
        "unlisted": "not listed in the manifest",
        "lying manifest": "sha256",
        "device": "not a regular file",
        "foreign owner": "not owned by the uploader",
        "unreadable file": "'ok.txt': the processor may not read this file",
        "unreadable folder": "'d': the processor may not read this folder",
    }
    for what, name in quarantined.items():
        assert (study_dir(dep) / "quarantine" / name).is_dir(), what
        assert expect[what] in reason(dep, name), (what, reason(dep, name))
    assert (dep.inbox / outsider).is_dir()
    assert (dep.inbox / unmovable).is_dir()
    assert f"{unmovable}: its owner removed the group's write permission" in result.stderr
    assert "may not upload to this study; left alone" in result.stderr
    assert mallory in result.stderr
    assert os.readlink(dep.inbox / junk_link) == "/etc"
    assert (dep.inbox / junk_file).read_text() == "hi\n"
    assert (dep.inbox / "badly named").is_dir()
    assert "not an upload entry" in result.stderr
    assert dropbox_problems(study_dir(dep), dep.base / "state", dep.destination) == []
    # Nothing is ever written as the collector or outside the dropbox and tree.
    for path in dep.destination.rglob("*"):
        assert path.lstat().st_uid == _uid(svc), path
    # A second run changes nothing: the left-alone items stay left alone.
    again = process(dep)
    assert again.returncode == 0, again.stderr
    assert len(tree_files(dep.destination)) == 2
    for left in (outsider, junk_link, junk_file):
        os.lstat(dep.inbox / left)
    for left in (outsider, unmovable, junk_link, junk_file, "badly named"):
        target = dep.inbox / left
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()


def _uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def test_a_racing_collector_never_gets_another_studys_bytes_published(dep: Deployment) -> None:
    """Swaps through an fd held since before the claim: a symlink to another study's file
    (readable by the processor, not by the collector) or to /etc/shadow, then the honest file
    back, in a tight loop while the processor runs three times per entry."""
    alice = dep.collector
    # Another study's stored file: readable by the processor, never by alice.
    other = dep.base / "study" / "other" / "raw"
    secret = secrets.token_hex(32)
    target = other / "secret.txt"
    target.write_text(secret)
    os.chown(target, _uid(dep.service), -1)
    target.chmod(0o440)
    assert as_user(dep, alice, "cat", str(target)).returncode != 0
    shadow = Path("/etc/shadow")
    forbidden = [secret.encode()] + ([shadow.read_bytes()] if shadow.exists() else [])
    content = "A" * 4096
    # Both outcomes are fine (and both happen: rounds without pauses tend to be quarantined).
    outcomes: dict[str, int] = {"published": 0, "quarantined": 0}
    rounds = 6
    for round_ in range(rounds):
        name = build(dep, alice, {"data.bin": content})
        aim = shadow if round_ % 3 == 2 else target
        pause = "0.002" if round_ % 2 else "0"
        racer = subprocess.Popen(
            ["setpriv", f"--reuid={alice}", f"--regid={alice}", "--init-groups",
             str(dep.python), "-I", "-c", RACE, str(dep.inbox), name, str(aim), content, "2",
             pause],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert racer.stdout is not None
        assert racer.stdout.readline().strip() == "ready"
        for _ in range(3):
            result = process(dep)  # a timeout here would raise: nothing hangs
            assert result.returncode == 0, result.stderr
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
        assert int(out.split()[-1]) > 0, "the racer never managed a swap"
        shutil.rmtree(dep.inbox / f".{name}-scratch", ignore_errors=True)
        if (study_dir(dep) / "done" / name).is_dir():
            outcomes["published"] += 1
        else:
            assert (study_dir(dep) / "quarantine" / name).is_dir(), name
            outcomes["quarantined"] += 1
    assert sum(outcomes.values()) == rounds
    # No byte of the target anywhere under the destination (ledger and staging included), and
    # what was published is exactly what alice sent.
    for path in dep.destination.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert not any(f in path.read_bytes() for f in forbidden), path
    for rel, data in tree_files(dep.destination).items():
        if rel.startswith("data"):
            assert data == content.encode(), rel
    assert tree_problems(dep.destination) == []
    assert dropbox_problems(study_dir(dep), dep.base / "state", dep.destination) == []
    assert target.read_text() == secret


def test_one_collectors_flood_does_not_starve_another(dep: Deployment) -> None:
    flood = [build(dep, dep.collector, {"flood.txt": f"flood {i}"}) for i in range(4)]
    time.sleep(0.02)
    small = build(dep, bob(dep), {"small.txt": "one small upload"})
    result = process(dep)
    assert result.returncode == 0, result.stderr
    fd = os.open(dep.destination, os.O_RDONLY | os.O_DIRECTORY)
    try:
        order = list(dict.fromkeys(r["upload"] for r in read_ledger(fd)))
    finally:
        os.close(fd)
    assert order[-5:] == [flood[0], small, *flood[1:]]


def test_an_entry_made_unmovable_after_its_claim_costs_only_itself(dep: Deployment) -> None:
    alice = dep.collector
    name = build(dep, alice, {"late.txt": "chmodded after the claim"})
    holder = subprocess.Popen(
        ["setpriv", f"--reuid={alice}", f"--regid={alice}", "--init-groups",
         str(dep.python), "-I", "-c", HOLD, str(dep.inbox / name)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "ready"
    # The processor dies once the entry is published and recorded, before the move to done/.
    env = {**os.environ, "DITTOHEAD_TEST_CRASH_AT": "flushed:1"}
    killed = subprocess.run(
        ["setpriv", f"--reuid={dep.service}", f"--regid={dep.service}", "--init-groups",
         str(dep.python), "-I", "-m", "dittohead.receiver.processor.service", "--once",
         "--config", str(dep.config_path)],
        check=False, text=True, capture_output=True, timeout=60, env=env,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "done"
    holder.wait(timeout=10)
    later = build(dep, dep.collector, {"after.txt": "still flows"})
    result = process(dep)
    assert result.returncode == 0, result.stderr
    assert "took away the write bit a move needs" in result.stderr
    files = tree_files(dep.destination)
    assert files["late.txt"] == b"chmodded after the claim"
    assert files["after.txt"] == b"still flows"
    assert tree_problems(dep.destination) == []
    assert (study_dir(dep) / "done" / f"{name}.stuck").is_file()
    assert (study_dir(dep) / "processing" / name).is_dir()
    assert (study_dir(dep) / "done" / later).is_dir()
    journal = study_dir(dep) / "processing" / ".claims"
    assert not [p.name for p in journal.iterdir() if p.name != "lock"]
    # Runs after that leave it be: nothing is stored twice.
    assert process(dep).returncode == 0
    assert tree_files(dep.destination) == files
