"""Two server hosts on one GlusterFS volume (docs/admins/scale-out.md): the volume mounted twice,
each mount one "host" with its own config, ``cluster.host``, sshd, socket and ``state_dir`` (on
the local disk), its dropbox and study tree reached through its own mount of the volume.

Real: GlusterFS 10 (glusterd in its own network namespace, two FUSE mounts), OpenSSH's sshd
(one per host) with real Unix users, ``dittohead send`` through each host's receiver, both
hosts' ``dittohead-processor --once`` as the service account, SIGKILLed at random. Nothing is
mocked. Both "hosts" share one kernel: what crosses between them goes through the volume (the
FUSE clients are separate), but a process of one is not seen as dead by the other, which is
the case the lease exists for.

First, what the processors rely on is measured on this volume: an fcntl lock taken through one
mount excludes one through the other, and lines appended under the lock through one mount are
seen through the other — only with GlusterFS's stat cache (md-cache) off and the FUSE attribute
cache at 0; with the defaults they are not (the admin's page says so).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dittohead.core.versions import version_name
from dittohead.receiver.dropbox import claims_dir
from tests.integration.harness import Deployment, _start_sshd, deployment, run
from tests.support import gluster
from tests.support.invariants import tree_files

pytestmark = [pytest.mark.cluster, pytest.mark.root]

LEASE = 2.0


def _counter(path: Path, lock: Path, rounds: int) -> None:  # pragma: no cover - a child
    """Under the lock: read the last number of `path`, append the next one, fsync."""
    lk = os.open(lock, os.O_RDWR)
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    for _ in range(rounds):
        fcntl.lockf(lk, fcntl.LOCK_EX)
        data = os.pread(fd, os.fstat(fd).st_size, 0)
        last = int(data.splitlines()[-1]) if data else 0
        os.write(fd, f"{last + 1}\n".encode())
        os.fsync(fd)
        fcntl.lockf(lk, fcntl.LOCK_UN)
    os._exit(0)


def locked_appends(one: Path, two: Path, rounds: int = 100) -> list[int]:
    """Two processes, one per mount, each appending `rounds` numbers the way the ledger is
    written (long-lived fd, size by fstat, append, fsync, all under lockf); the numbers."""
    name = f"count-{os.urandom(4).hex()}"
    (one / name).write_bytes(b"")
    (one / f"{name}.lock").write_bytes(b"")
    children = []
    for mount in (one, two):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            _counter(mount / name, mount / f"{name}.lock", rounds)
        children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    return [int(line) for line in (one / name).read_text().split()]


@pytest.fixture(scope="module")
def coherent(glusterfs: gluster.Volume) -> Iterator[list[Path]]:
    """The volume with the client caches off, mounted twice more without FUSE caching (the two
    hosts)."""
    with gluster.coherent_mounts(glusterfs, 2) as points:
        yield points


def test_locks_exclude_across_mounts_and_locked_appends_are_seen_only_without_caches(
    glusterfs: gluster.Volume, coherent: list[Path]
) -> None:
    one, two = coherent
    # A POSIX lock (what the study lock is) held by a process through mount 2 ...
    (one / "L").write_bytes(b"")
    ready, go = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        held = os.open(two / "L", os.O_RDWR)
        fcntl.lockf(held, fcntl.LOCK_EX)
        os.write(go, b"x")
        time.sleep(1)
        os._exit(0)
    os.read(ready, 1)
    fd = os.open(one / "L", os.O_RDWR)
    try:
        # ... refuses one through mount 1, which gets it once the holder is gone.
        with pytest.raises(OSError):
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        began = time.monotonic()
        fcntl.lockf(fd, fcntl.LOCK_EX)
        assert time.monotonic() - began > 0.3
    finally:
        os.close(fd)
        os.waitpid(child, 0)
    # With these mounts and the caches off, every append sees the one before, whichever mount.
    for _ in range(3):
        assert locked_appends(one, two) == list(range(1, 201))
    # With the defaults (md-cache on, 1 s FUSE attribute cache) it does not: the lock is
    # exclusive, yet a mount reads a stale size and writes a number the other one wrote.
    gluster.client_caches(glusterfs, "on")
    try:
        stale = locked_appends(glusterfs.mounts[0], glusterfs.mounts[1])
    finally:
        gluster.client_caches(glusterfs, "off")
    assert len(set(stale)) < len(stale), "GlusterFS's defaults became coherent: update the docs"


@dataclasses.dataclass
class Host:
    """One server host: its deployment view (config, keys, sshd), its mount of the volume."""

    dep: Deployment
    name: str
    mount: Path

    def processor(self, crash: str | None = None) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DITTOHEAD_")}
        if crash:
            env["DITTOHEAD_TEST_CRASH_AT"] = crash
        dep = self.dep
        return subprocess.Popen(
            [
                "setpriv", f"--reuid={dep.service}", f"--regid={dep.service}", "--init-groups",
                str(dep.python), "-I", "-m", "dittohead.receiver.processor.service", "--once",
                "--config", str(dep.config_path),
            ],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def process(self, crash: str | None = None) -> str:
        """A pass to its end; its log. A pass that fails is the test's failure."""
        proc = self.processor(crash)
        _, err = proc.communicate(timeout=120)
        if proc.returncode != (-signal.SIGKILL if crash else 0):
            raise AssertionError(f"{self.name}: exit {proc.returncode}: {err}")
        return err


@dataclasses.dataclass
class Cluster:
    hosts: list[Host]
    collectors: list[str]
    study: str
    shared: Path  # the deployment's folder on the volume, through the first host's mount

    @property
    def study_dir(self) -> Path:
        return self.shared / "dropbox" / self.study


def _host_config(shared: Path, view: Path, local: Path, name: str) -> None:
    """Host `name`'s config: the shared deployment's, with its paths through mount `view`, and
    its own state_dir, socket and cluster.host on its local disk."""
    doc = yaml.safe_load((shared / "etc" / "dittohead.yaml").read_text())
    doc["dropbox"] = str(view / "dropbox")
    for study in doc["studies"].values():
        study["destination"] = str(view / Path(study["destination"]).relative_to(shared))
    doc["state_dir"] = str(local / "state")
    doc["socket"] = str(local / "run" / "processor.sock")
    doc["cluster"] = {"host": name, "lease": f"{LEASE:g}s"}
    (local / "etc").mkdir()
    path = local / "etc" / "dittohead.yaml"
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o644)


@pytest.fixture(scope="module")
def cluster(coherent: list[Path]) -> Iterator[Cluster]:
    shared = Path(tempfile.mkdtemp(prefix="two-hosts-", dir=coherent[0]))
    locals_: list[Path] = []
    hosts: list[Host] = []
    try:
        for dep in deployment(shared, sshd=False):
            bob = dep.accounts.user("bob", shared / "home", (dep.collectors,))
            for i, mount in enumerate(coherent):
                local = Path(tempfile.mkdtemp(prefix=f"dittohead-host{i + 1}-"))
                local.chmod(0o755)
                locals_.append(local)
                name = f"host{i + 1}"
                _host_config(shared, mount / shared.name, local, name)
                view = dataclasses.replace(dep, base=local, port=0, sshd=None)
                init = view.admin("init")
                assert init.returncode == 0, init.stderr
                _start_sshd(view)
                keys = local / "keys"
                run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / bob)
                (keys / f"{bob}.authorized").write_text((keys / f"{bob}.pub").read_text())
                hosts.append(Host(view, name, mount))
            yield Cluster(hosts, [dep.collector, bob], dep.study, shared)
    finally:
        for host in hosts:
            if host.dep.sshd is not None:
                host.dep.sshd.terminate()
                host.dep.sshd.wait(timeout=10)
        for local in locals_:
            shutil.rmtree(local, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)


def leftovers(c: Cluster) -> list[str]:
    """Entries not finished: in the inbox, in processing/, or with a journal or lease."""
    left = [f"inbox/{n}" for n in os.listdir(c.study_dir / "inbox")]
    left += [f"processing/{n}" for n in os.listdir(c.study_dir / "processing") if n != ".claims"]
    claims = claims_dir(c.shared / "dropbox", c.study)
    left += [f"claims/{n}" for n in os.listdir(claims) if n != "lock"]
    return sorted(left)


def dest(c: Cluster) -> Path:
    """The study tree through the first host's mount."""
    dep = c.hosts[0].dep
    doc = yaml.safe_load(dep.config_path.read_text())
    return Path(doc["studies"][c.study]["destination"])


def versions(files: dict[str, bytes], path: str) -> list[bytes]:
    """The contents stored for `path`, version 1 first, up to the first missing number."""
    out: list[bytes] = []
    while (name := version_name(path, len(out) + 1)) in files:
        out.append(files[name])
    return out


def test_two_hosts_killed_at_random_store_every_version_once(cluster: Cluster) -> None:
    c = cluster
    rng = random.Random(2101)
    rounds = 4
    pc = c.hosts[0].dep.base / "pc"
    sent: dict[str, list[bytes]] = {}  # path -> contents, in one collector's commit order
    shared_sent: set[bytes] = set()
    errors: list[str] = []

    def collector(user: str, seed: int) -> None:
        own = random.Random(seed)
        folder = pc / user
        (folder / "eprime").mkdir(parents=True)
        (folder / "shared").mkdir()
        (folder / "biopac").mkdir()
        (folder / "biopac" / f"{user}.acq").write_bytes(own.randbytes(400_000))
        for r in range(rounds):
            # A path of their own that changes every time (a new version each round), one
            # every collector sends with one of two contents (versions and duplicates across
            # collectors and hosts), and a large file that never changes.
            own_text = f"{user} round {r}\n".encode()
            (folder / "eprime" / f"{user}.txt").write_bytes(own_text)
            (folder / "shared" / "protocol.txt").write_text(f"protocol v{own.randrange(2)}\n")
            host = c.hosts[(r + seed) % 2]  # each round through the other host
            out = host.dep.send(user, folder, state=pc / f"{user}-{host.name}.state")
            if out.returncode != 0:
                errors.append(f"{user} via {host.name}: {out.stderr}")
                return
            sent.setdefault(f"eprime/{user}.txt", []).append(own_text)
            shared_sent.add((folder / "shared" / "protocol.txt").read_bytes())

    senders = [
        threading.Thread(target=collector, args=(user, i)) for i, user in enumerate(c.collectors)
    ]
    for t in senders:
        t.start()
    kills = 0
    killer = threading.Lock()

    def host_loop(host: Host, seed: int) -> None:
        nonlocal kills
        own = random.Random(seed)
        for _ in range(40):  # bounded; ends once the uploads are in
            busy = any(t.is_alive() for t in senders)
            proc = host.processor()
            try:
                proc.wait(timeout=own.uniform(0.2, 2.0))
            except subprocess.TimeoutExpired:
                if own.random() < 0.6:
                    proc.kill()
                    with killer:
                        kills += 1
                proc.wait(timeout=120)
            assert proc.stderr is not None
            err = proc.stderr.read()
            proc.stderr.close()
            if proc.returncode not in (0, -signal.SIGKILL):
                errors.append(f"{host.name}: exit {proc.returncode}: {err}")
                return
            if not busy:
                return

    loops = [threading.Thread(target=host_loop, args=(h, rng.randrange(1 << 30))) for h in c.hosts]
    for t in loops:
        t.start()
    for t in senders + loops:
        t.join(timeout=240)
    assert errors == []
    assert kills > 0, "no processor was killed: the entries are too small or the waits long"
    # Clean passes on each host, once the killed hosts' leases have run out.
    for _ in range(5):
        if not leftovers(c):
            break
        time.sleep(LEASE + 0.2)
        for host in c.hosts:
            host.process()
    assert leftovers(c) == []
    assert os.listdir(c.study_dir / "quarantine") == []
    assert len(os.listdir(c.study_dir / "done")) == rounds * len(c.collectors)

    files = tree_files(dest(c))
    # Each collector's own path: one version per round, in the order sent, the first one
    # under the plain name.
    for path, contents in sent.items():
        assert versions(files, path) == contents, path
    # The shared path: each content once, whichever host and collector sent it first.
    shared = versions(files, "shared/protocol.txt")
    assert sorted(shared) == sorted(shared_sent)
    for user in c.collectors:
        assert versions(files, f"biopac/{user}.acq") == [
            (c.hosts[0].dep.base / "pc" / user / "biopac" / f"{user}.acq").read_bytes()
        ]
    # No name outside the versions counted above (no collision, nothing stray).
    counted = sum(len(v) for v in sent.values()) + len(shared) + len(c.collectors)
    assert len(files) == counted, sorted(files)

    # The ledger and history agree with the tree, and verify passes, from either host.
    for host in c.hosts:
        history = host.dep.admin("history", "--study", c.study, "--json")
        assert history.returncode == 0, history.stderr
        records = [json.loads(line) for line in history.stdout.splitlines()]
        stored = sorted(r["stored_as"] for r in records if r["outcome"] == "stored")
        assert stored == sorted(files), host.name
        verify = host.dep.admin("verify", "--study", c.study)
        assert verify.returncode == 0, verify.stdout + verify.stderr


def test_an_entry_of_a_killed_host_is_finished_by_the_other_after_its_lease(
    cluster: Cluster,
) -> None:
    c = cluster
    first, second = c.hosts
    folder = first.dep.base / "pc" / "takeover"
    (folder / "d").mkdir(parents=True)
    data = {"d/big.bin": os.urandom(300_000), "d/small.txt": b"takeover\n"}
    for path, content in data.items():
        (folder / path).write_bytes(content)
    out = first.dep.send(c.collectors[0], folder, state=folder.parent / "takeover.state")
    assert out.returncode == 0, out.stderr
    (name,) = os.listdir(c.study_dir / "inbox")
    first.process(crash="staged:1")  # SIGKILLed by its own hand, the entry staged
    killed = time.monotonic()  # its lease was renewed last before its end
    # Within the lease, the other host leaves it alone (the first may only be slow) ...
    log = second.process()
    if time.monotonic() - killed < LEASE:
        assert "taking over" not in log
        assert name in os.listdir(c.study_dir / "processing")
    # ... after it, takes it over and finishes it, once.
    time.sleep(max(0.0, LEASE + 0.2 - (time.monotonic() - killed)))
    assert f"taking over {name} from host {first.name}" in second.process()
    files = tree_files(dest(c))
    for path, content in data.items():
        assert versions(files, path) == [content]
    assert name in os.listdir(c.study_dir / "done")
    assert leftovers(c) == []
    verify = second.dep.admin("verify", "--study", c.study)
    assert verify.returncode == 0, verify.stdout + verify.stderr
