"""A real GlusterFS volume for the cluster tier, served from a network namespace and FUSE-mounted
several times (each mount stands for one server host).

glusterd refuses a brick on a loopback address, so the test makes its own network namespace
with a veth pair (10.233.<n>.1/30 in the host's namespace, .2 inside; addresses only ever
used between the two ends of that pair) and runs glusterd inside it, in a mount namespace of
its own where /var/lib/glusterd, /var/log/glusterfs and /run/gluster are bind mounts of
folders below the test's temporary folder: nothing of the host's GlusterFS state is read or
written. The brick processes glusterd starts inherit both namespaces. The FUSE clients run in
the host's namespace (where the tests are) and reach the volume over the veth pair.

Teardown unmounts, stops the volume, ends every process in the namespace (by pid), deletes the
namespace (and with it the veth pair) and the temporary folder; a process still alive after
that fails the fixture instead of lingering.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

GLUSTERD = Path("/usr/sbin/glusterd")
MOUNT_HELPER = Path("/sbin/mount.glusterfs")
#: what glusterd keeps below these, bind-mounted from the test's own folders
STATE_DIRS = (Path("/var/lib/glusterd"), Path("/var/log/glusterfs"), Path("/run/gluster"))
#: what docs/admins/scale-out.md asks of every host's mount when several hosts share the volume:
#: no FUSE attribute, entry or negative-lookup caching
COHERENT_OPTIONS = "acl,attribute-timeout=0,entry-timeout=0,negative-timeout=0"
#: ... and of the volume: the client-side caches off (md-cache is stat-prefetch; measured: with
#: md-cache alone off, a locked append still missed the one before now and then)
CLIENT_CACHES = (
    "performance.stat-prefetch",
    "performance.quick-read",
    "performance.write-behind",
    "performance.open-behind",
    "performance.io-cache",
    "performance.read-ahead",
)


def _run(*argv: str | Path, check: bool = True, timeout: float = 60) -> str:
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed: {done.stderr or done.stdout}")
    return done.stdout


def missing() -> str | None:
    """What this machine lacks to serve a volume (None: nothing), for `require`."""
    if os.geteuid() != 0:
        return "the cluster tier needs root (namespaces, mounts)"
    if not GLUSTERD.exists() or not MOUNT_HELPER.exists():
        return "glusterfs-server and glusterfs-client are not installed (make test installs them)"
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is missing: FUSE mounts are impossible here"
    return None


@dataclass
class Volume:
    """A started single-brick volume and its mounts."""

    name: str
    server: str  # the address glusterd serves from, inside its namespace
    base: Path
    mounts: list[Path] = field(default_factory=list)
    netns: str = ""
    glusterd: subprocess.Popen[bytes] | None = None

    def gluster(self, *args: str) -> str:
        """The gluster command line, talking to this volume's glusterd (in its namespaces)."""
        assert self.glusterd is not None
        pid = str(self.glusterd.pid)
        return _run("nsenter", "-t", pid, "-m", "-n", "gluster", "--mode=script", *args)

    def profile(self) -> set[str]:
        """The file operations the brick saw since the last call (``volume profile``)."""
        out = self.gluster("volume", "profile", self.name, "info", "incremental")
        fops = set()
        for line in out.splitlines():
            words = line.split()
            if len(words) >= 8 and words[-1].isupper() and words[-1].isalpha():
                fops.add(words[-1])
        return fops


def _free_subnet() -> int:
    used = _run("ip", "-o", "-4", "addr", "show")
    for _ in range(64):
        n = secrets.randbelow(256)
        if f" 10.233.{n}." not in used:
            return n
    raise RuntimeError("no free 10.233.<n>.0/30 subnet for the test's veth pair")


@contextmanager
def volume(copies: int = 2, under: Path | None = None) -> Iterator[Volume]:
    """A fresh volume, mounted `copies` times (with POSIX ACLs on); its brick and glusterd's
    state in a new folder below `under` (default: the system's temporary folder)."""
    base = Path(tempfile.mkdtemp(prefix="dittohead-gluster-", dir=under))
    base.chmod(0o755)  # the deployments on the volume have users who must pass through
    tag = secrets.token_hex(3)
    n = _free_subnet()
    host_end, ns_end = f"dhgl{tag}a", f"dhgl{tag}b"
    vol = Volume(name=f"dh{tag}", server=f"10.233.{n}.2", base=base, netns=f"dittohead-{tag}")
    try:
        _start(vol, host_end, ns_end, f"10.233.{n}.1")
        for i in range(copies):
            point = base / f"host{i + 1}"
            point.mkdir()
            _run(
                "mount", "-t", "glusterfs",
                "-o", f"acl,log-file={base / 'log' / f'host{i + 1}.log'}",
                f"{vol.server}:/{vol.name}", point,
            )  # fmt: skip
            point.chmod(0o755)  # the volume's root, as every mount sees it
            vol.mounts.append(point)
        yield vol
    finally:
        _stop(vol)


def client_caches(vol: Volume, value: str) -> None:
    """Turn the volume's client-side caches (`CLIENT_CACHES`) "on" or "off", and wait until the
    mounted clients have the new setting."""
    for option in CLIENT_CACHES:
        vol.gluster("volume", "set", vol.name, option, value)
    # glusterd hands the new graph to the clients asynchronously: wait until it says it is set
    deadline = time.monotonic() + 10
    while vol.gluster("volume", "get", vol.name, CLIENT_CACHES[0]).split()[-1] != value:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{CLIENT_CACHES[0]} did not become {value} within 10 s")
        time.sleep(0.1)
    time.sleep(1)  # and let mounted clients switch graphs


@contextmanager
def coherent_mounts(vol: Volume, count: int) -> Iterator[list[Path]]:
    """The volume as several hosts must mount it (docs/admins/scale-out.md): the client caches
    off and `count` more mounts with `COHERENT_OPTIONS`; afterwards unmounted and the caches'
    options reset to the volume's defaults."""
    client_caches(vol, "off")
    points: list[Path] = []
    source = f"{vol.server}:/{vol.name}"
    try:
        for i in range(1, count + 1):
            point = vol.base / f"coherent{i}"
            point.mkdir()
            _run("mount", "-t", "glusterfs", "-o", COHERENT_OPTIONS, source, point)
            points.append(point)
        yield points
    finally:
        for point in points:
            _run("umount", point, check=False)
        for option in CLIENT_CACHES:
            vol.gluster("volume", "reset", vol.name, option)


def _start(vol: Volume, host_end: str, ns_end: str, host_address: str) -> None:
    for sub in ("lib", "log", "run", "brick"):
        (vol.base / sub).mkdir()
    # glusterd's hooks and groups (from the package) in its own working folder
    shutil.copytree(STATE_DIRS[0], vol.base / "lib", dirs_exist_ok=True)
    for folder in STATE_DIRS:
        folder.mkdir(parents=True, exist_ok=True)  # the bind mounts' targets
    _run("ip", "netns", "add", vol.netns)
    _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
    _run("ip", "link", "set", ns_end, "netns", vol.netns)
    _run("ip", "addr", "add", f"{host_address}/30", "dev", host_end)
    _run("ip", "link", "set", host_end, "up")
    inside = ("ip", "netns", "exec", vol.netns)
    _run(*inside, "ip", "addr", "add", f"{vol.server}/30", "dev", ns_end)
    _run(*inside, "ip", "link", "set", ns_end, "up")
    _run(*inside, "ip", "link", "set", "lo", "up")
    binds = " && ".join(
        f"mount --bind {vol.base / sub} {target}"
        for sub, target in zip(("lib", "log", "run"), STATE_DIRS, strict=True)
    )
    log = vol.base / "log" / "glusterd.log"
    vol.glusterd = subprocess.Popen(
        [*inside, "unshare", "-m", "--propagation", "private", "sh", "-c",
         f"{binds} && exec {GLUSTERD} -N --log-file={log}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        if vol.glusterd.poll() is not None:
            raise RuntimeError(f"glusterd ended at once: {log.read_text(errors='replace')}")
        try:
            vol.gluster("volume", "list")
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    brick = f"{vol.server}:{vol.base / 'brick'}"
    vol.gluster("volume", "create", vol.name, brick, "force")
    vol.gluster("volume", "start", vol.name)
    vol.gluster("volume", "profile", vol.name, "start")


def _stop(vol: Volume) -> None:
    errors: list[str] = []
    for point in reversed(vol.mounts):
        _run("umount", point, check=False)
        if os.path.ismount(point):  # still busy: detach it, the clients are ended below
            _run("umount", "-l", point, check=False)
    clients = _clients(vol.server)
    if vol.glusterd is not None and vol.glusterd.poll() is None:
        with suppress(RuntimeError, subprocess.TimeoutExpired):
            vol.gluster("volume", "stop", vol.name, "force")
    if vol.netns:
        pids = _run("ip", "netns", "pids", vol.netns, check=False).split()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in map(int, pids + clients):
                with suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(0.5 if sig == signal.SIGTERM else 0)
        if vol.glusterd is not None:
            try:
                vol.glusterd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                errors.append("glusterd did not end")
        _run("ip", "netns", "del", vol.netns, check=False)
        left = [p for p in map(int, pids + clients) if _alive(p)]
        if left:
            errors.append(f"processes left running: {left}")
    shutil.rmtree(vol.base, ignore_errors=True)
    if errors:
        raise RuntimeError("; ".join(errors))


def _clients(server: str) -> list[str]:
    """The FUSE client processes of this volume (they run in the host's namespace)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(b"glusterfs") and f"--volfile-server={server}".encode() in argv:
                    found.append(entry.name)
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for a parent outside the test does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
