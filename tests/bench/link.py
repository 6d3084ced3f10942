"""``make bench-link``: dittohead and its peers over a shaped link, as a lab PC sends to a server.

Not a pytest test. Needs root: it builds on `tests.bench.run` (a journaled ext4 image on a loop
device, the harness's deployment with its users, a plain shell user for the peers) and adds a
link: a network namespace for the server joined to the PC (the initial namespace) by a veth
pair, shaped on both ends with ``tc qdisc … tbf`` (``netem`` is not in this kernel, so there is
no added delay or loss: only the rate). A second sshd, with the deployment's own configuration
(the same ``ForceCommand`` for collectors), runs inside the server's namespace.

What is measured, per link rate, tools rotated within each run, medians over the runs, each
into an empty destination and durable at the end:

* ``dittohead send`` until its receipt (the receiver syncs before it commits), with
  compression as the client chooses it over a network (``DITTOHEAD_COMPRESS`` unset) and, for
  comparison, with it switched off (``DITTOHEAD_COMPRESS=0``);
* ``tar -cf - . | ssh 'tar -xf - && sync'``;
* ``tar -cf - . | zstd -3 | ssh 'zstd -d | tar -xf - && sync'``;
* ``rsync -a --fsync`` and ``rsync -az --fsync``.

The dataset is generated here, ~100 MiB that looks like a lab's: E-Prime logs (UTF-16 text),
edat-like binary records, int16 signal files whose low byte is noise, and incompressible
eyetracker files.

Usage: ``python tests/bench/link.py [--runs N] [--rates 100mbit,1gbit] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.run import (  # noqa: E402
    CIPHER,
    TIME,
    USAGE,
    MiB,
    add_shell_user,
    files_of,
    last_usage,
    loop_ext4,
    settle,
    timed,
    usage_lines,
    wipe,
    wrap_receiver,
)
from tests.integration.harness import Deployment, deployment, free_port, run  # noqa: E402

NETNS = "dhlink-srv"
PC_DEV, SRV_DEV = "dhlink-pc", "dhlink-srv"
PC_IP, SRV_IP = "10.231.0.1", "10.231.0.2"
#: tbf's bucket must hold at least rate/HZ bytes; 256 KiB (PERF.md's figure) at 100 Mbit/s,
#: more at 1 Gbit/s, where 256 KiB would cap the rate below what was asked
BURST = {"100mbit": "256kb", "1gbit": "1mb"}
TOOLS = ("dh", "dh_plain", "tar", "tar_zstd", "rsync", "rsync_z")
LABELS = {
    "dh": "dittohead send (compression on)",
    "dh_plain": "dittohead send, DITTOHEAD_COMPRESS=0",
    "tar": "tar | ssh | tar && sync",
    "tar_zstd": "tar | zstd -3 | ssh | zstd -d | tar && sync",
    "rsync": "rsync -a --fsync",
    "rsync_z": "rsync -az --fsync",
}
PEERS = ("tar", "tar_zstd", "rsync", "rsync_z")


# --------------------------------------------------------------------------- the dataset


def utf16_log(rng: random.Random, size: int) -> bytes:
    """An E-Prime log: ``Key: value`` lines per trial, UTF-16 with a BOM, CRLF."""
    lines = [
        "*** Header Start ***",
        "VersionPersist: 1",
        "Experiment: faces_v3",
        "*** Header End ***",
    ]
    trial = 0
    text_size = 0
    while text_size < size // 2:
        trial += 1
        block = [
            "\tLevel: 2",
            "\t*** LogFrame Start ***",
            f"\tTrial: {trial}",
            f"\tStimulus: face{rng.randrange(120):03d}.bmp",
            f"\tCondition: {rng.choice(('happy', 'neutral', 'fearful'))}",
            f"\tFixation.OnsetTime: {1000 * trial + rng.randrange(20)}",
            f"\tStim.RT: {rng.randrange(250, 900)}",
            f"\tStim.RESP: {rng.choice('12')}",
            f"\tStim.ACC: {rng.choice('01')}",
            "\t*** LogFrame End ***",
        ]
        chunk = "\r\n".join(block) + "\r\n"
        lines.append(chunk)
        text_size += len(chunk)
    return "\r\n".join(lines).encode("utf-16")[:size]


def edat_like(rng: random.Random, size: int) -> bytes:
    """Fixed-layout binary records: ids, times, small codes, a float, a short name."""
    out = bytearray(b"EDAT\x03\x00" + bytes(58))
    t = 0
    while len(out) < size:
        t += rng.randrange(800, 1500)
        name = f"face{rng.randrange(120):03d}".encode().ljust(12, b"\0")
        out += struct.pack(
            "<IIHHf12sB", len(out), t, rng.randrange(4), rng.randrange(3),
            rng.gauss(500, 120), name, rng.randrange(2),
        )  # fmt: skip
    return bytes(out[:size])


_LOW_NIBBLE = bytes(i & 0x0F for i in range(256))


def int16_signal(rng: random.Random, size: int) -> bytes:
    """Little-endian int16 samples: a slow wave in the high byte, 4 bits of noise in the low."""
    half = size // 2
    period = bytes(100 + int(40 * ((i % 400) / 200 - 1) ** 2) for i in range(400))
    high = (period * (half // len(period) + 1))[:half]
    low = os.urandom(half).translate(_LOW_NIBBLE)
    out = bytearray(2 * half)
    out[0::2] = low
    out[1::2] = high
    return bytes(out)


def make_lab(root: Path, rng: random.Random) -> None:
    """~100 MiB: 40 E-Prime logs of ~0.6 MiB, 40 edat-like files of ~0.18 MiB, 8 int16 signals
    of 6 MB, 4 incompressible eyetracker files of 5 MB, in a folder per subject."""
    for s in range(40):
        subject = root / f"sub-{s + 1:02d}"
        (subject / "beh").mkdir(parents=True)
        (subject / "beh" / f"faces-{s + 1}-1.txt").write_bytes(
            utf16_log(rng, 600 * 1024 + rng.randrange(40 * 1024))
        )
        (subject / "beh" / f"faces-{s + 1}-1.edat3").write_bytes(
            edat_like(rng, 180 * 1024 + rng.randrange(16 * 1024))
        )
    for s in range(8):
        eeg = root / f"sub-{s + 1:02d}" / "eeg"
        eeg.mkdir(parents=True, exist_ok=True)
        (eeg / "run-1.dat").write_bytes(int16_signal(rng, 6_000_000))
    for s in range(4):
        eye = root / f"sub-{s + 1:02d}" / "eyetracker"
        eye.mkdir(parents=True, exist_ok=True)
        (eye / "run-1.edf").write_bytes(os.urandom(5_000_000))


# --------------------------------------------------------------------------- the link


def sh(*argv: str) -> None:
    run(*argv)


@contextmanager
def shaped_link() -> Iterator[None]:
    """The server's namespace and the veth pair (removed afterwards)."""
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", PC_DEV], capture_output=True, check=False)
    sh("ip", "netns", "add", NETNS)
    try:
        sh("ip", "link", "add", PC_DEV, "type", "veth", "peer", "name", SRV_DEV)
        sh("ip", "link", "set", SRV_DEV, "netns", NETNS)
        sh("ip", "addr", "add", f"{PC_IP}/24", "dev", PC_DEV)
        sh("ip", "link", "set", PC_DEV, "up")
        inside = ("ip", "netns", "exec", NETNS)
        sh(*inside, "ip", "addr", "add", f"{SRV_IP}/24", "dev", SRV_DEV)
        sh(*inside, "ip", "link", "set", SRV_DEV, "up")
        sh(*inside, "ip", "link", "set", "lo", "up")
        yield
    finally:
        subprocess.run(["ip", "link", "del", PC_DEV], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)


def shape(rate: str) -> None:
    """Both ends at `rate` (tbf)."""
    tbf = ["root", "tbf", "rate", rate, "burst", BURST.get(rate, "1mb"), "latency", "50ms"]
    sh("tc", "qdisc", "replace", "dev", PC_DEV, *tbf)
    sh("ip", "netns", "exec", NETNS, "tc", "qdisc", "replace", "dev", SRV_DEV, *tbf)


def start_sshd_inside(dep: Deployment) -> tuple[subprocess.Popen[str], int]:
    """A second sshd with the deployment's configuration, listening in the server's namespace."""
    port = free_port()
    text = (dep.base / "sshd_config").read_text()
    changed = {
        "Port ": f"Port {port}",
        "ListenAddress ": f"ListenAddress {SRV_IP}",
        "PidFile ": f"PidFile {dep.base / 'sshd-link.pid'}",
    }
    lines = [
        next((new for key, new in changed.items() if line.startswith(key)), line)
        for line in text.splitlines()
    ]
    config = dep.base / "sshd_config.link"
    config.write_text("\n".join(lines) + "\n")
    host_pub = (dep.base / "keys" / "host.pub").read_text().split()
    with dep.known_hosts.open("a") as f:
        f.write(f"[{SRV_IP}]:{port} {host_pub[0]} {host_pub[1]}\n")
    log = (dep.base / "sshd-link.log").open("w")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", NETNS, "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
        stdout=log, stderr=log, text=True,
    )  # fmt: skip
    return proc, port


# --------------------------------------------------------------------------- the tools


class Link:
    def __init__(self, dep: Deployment, mnt: Path, shell: str, port: int, usage: Path) -> None:
        self.dep, self.mnt, self.shell, self.port = dep, mnt, shell, port
        #: where /usr/bin/time appends the client's and the receiver's CPU seconds
        self.usage = usage

    def ssh_argv(self) -> list[str]:
        return [
            "ssh", "-F", "none", "-p", str(self.port), "-i", str(self.dep.key(self.shell)),
            "-o", f"UserKnownHostsFile={self.dep.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-c", CIPHER,
        ]  # fmt: skip

    def ssh_line(self) -> str:
        return " ".join(shlex.quote(a) for a in self.ssh_argv())

    def fresh_dest(self, name: str) -> Path:
        dest = self.mnt / "peers" / name
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        shutil.chown(dest, self.shell, self.shell)
        return dest

    def tar(self, src: Path, dest: Path, *, zstd: bool) -> float:
        q = shlex.quote(str(dest))
        remote = (f"zstd -d -q -c | tar -xf - -C {q}" if zstd else f"tar -xf - -C {q}") + " && sync"
        middle = "zstd -3 -q -c | " if zstd else ""
        cmd = (
            f"set -o pipefail; tar -C {shlex.quote(str(src))} -cf - . | {middle}"
            f"{self.ssh_line()} {self.shell}@{SRV_IP} {shlex.quote(remote)}"
        )
        return timed([cmd], shell=True)[0]

    def rsync(self, src: Path, dest: Path, *, z: bool) -> float:
        flags = "-az" if z else "-a"
        argv = [
            "rsync",
            flags,
            "--fsync",
            "-e",
            self.ssh_line(),
            f"{src}/",
            f"{self.shell}@{SRV_IP}:{dest}/",
        ]
        return timed(argv)[0]

    def dh(
        self, src: Path, state: Path, *, compress: bool | None
    ) -> tuple[float, dict[str, Any], float, float]:
        """(seconds, receipt, client CPU seconds with its ssh, receiver CPU seconds)."""
        dep = self.dep
        argv = [
            str(dep.python), "-I", "-m", "dittohead.client.cli", "send",
            "--host", SRV_IP, "--port", str(self.port), "--user", dep.collector,
            "--identity", str(dep.key(dep.collector)), "--known-hosts", str(dep.known_hosts),
            "--state", str(state), "--study", dep.study, "--source", "brogden-a", "--json",
            str(src),
        ]  # fmt: skip
        env = {
            k: v for k, v in os.environ.items() if k not in ("DITTOHEAD_SSH", "DITTOHEAD_COMPRESS")
        }
        if compress is not None:
            env["DITTOHEAD_COMPRESS"] = "1" if compress else "0"
        receiver_log = self.usage / "receiver.txt"
        before = usage_lines(receiver_log.read_text())
        client_log = self.usage / "client.txt"
        start = time.perf_counter()
        done = subprocess.run(
            [TIME, "-f", USAGE, "-o", str(client_log), *argv],
            capture_output=True, text=True, check=False, timeout=3600, env=env,
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"dittohead send failed: {done.stderr[-2000:]}")
        receipt: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        text = receiver_log.read_text()
        receiver = last_usage(text)[1] if usage_lines(text) > before else 0.0
        return elapsed, receipt, last_usage(client_log.read_text())[1], receiver

    def reset_dittohead(self) -> None:
        wipe(self.dep.destination)
        for folder in ("inbox", "processing", "done"):
            wipe(self.dep.inbox.parent / folder)


def one_run(
    link: Link, src: Path, n_files: int, r: int, times: dict[str, list[float]],
    cpu: dict[str, list[float]],
) -> None:  # fmt: skip
    state_dir = link.mnt / "state"
    state_dir.mkdir(exist_ok=True)

    def dh(key: str, compress: bool | None) -> Callable[[], None]:
        def step() -> None:
            state = state_dir / f"{key}.json"
            state.unlink(missing_ok=True)
            link.reset_dittohead()
            seconds, receipt, client, receiver = link.dh(src, state, compress=compress)
            assert receipt["files"] == n_files, receipt
            times[key].append(seconds)
            cpu[f"{key}_client"].append(client)
            cpu[f"{key}_receiver"].append(receiver)

        return step

    def peer(key: str, go: Callable[[Path], float]) -> Callable[[], None]:
        def step() -> None:
            dest = link.fresh_dest(key)
            subprocess.run(["sync"], check=False)
            settle(src)
            times[key].append(go(dest))
            shutil.rmtree(dest)

        return step

    steps = [
        dh("dh", None),
        dh("dh_plain", False),
        peer("tar", lambda d: link.tar(src, d, zstd=False)),
        peer("tar_zstd", lambda d: link.tar(src, d, zstd=True)),
        peer("rsync", lambda d: link.rsync(src, d, z=False)),
        peer("rsync_z", lambda d: link.rsync(src, d, z=True)),
    ]
    k = r % len(steps)
    for step in steps[k:] + steps[:k]:
        subprocess.run(["sync"], check=False)
        settle(src)
        step()


def table(results: dict[str, Any]) -> str:
    rates = list(results)
    out = ["| tool | " + " | ".join(rates) + " |", "|---|" + "---|" * len(rates)]
    for tool in TOOLS:
        cells = []
        for rate in rates:
            med = results[rate]["median"][tool]
            cells.append(f"{med:.2f} s")
        label = LABELS[tool].replace("|", "\\|")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    ratio = []
    for rate in rates:
        med = results[rate]["median"]
        best = min(PEERS, key=lambda t: med[t])
        ratio.append(f"{med[best] / med['dh']:.2f}x ({best})")
    out.append("| dittohead vs the best peer | " + " | ".join(ratio) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per rate (default 3)")
    parser.add_argument("--rates", default="100mbit,1gbit", help="tc rates (default 100mbit,1gbit)")
    parser.add_argument("--json", type=Path, help="results file (default: in the run dir)")
    options = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "make bench-link needs root (users, sshd, a network namespace, a loop mount)",
            file=sys.stderr,
        )
        return 1
    rates = [r.strip() for r in options.rates.split(",") if r.strip()]
    run_dir = Path(tempfile.mkdtemp(prefix="dittohead-bench-link-"))
    run_dir.chmod(0o755)
    out_json = options.json or run_dir / "results.json"
    started = datetime.now(UTC)
    results: dict[str, Any] = {}
    with (
        loop_ext4(run_dir / "fs.img", run_dir / "base", 4 << 30) as mnt,
        contextmanager(deployment)(mnt) as dep,
        shaped_link(),
    ):
        shell = add_shell_user(dep)
        src = mnt / "src" / "lab"
        src.mkdir(parents=True)
        make_lab(src, random.Random(22))
        subprocess.run(["chmod", "-R", "a+rX", str(mnt / "src")], check=True)
        files = files_of(src)
        n_files, n_bytes = len(files), sum(p.stat().st_size for p in files)
        usage = mnt / "usage"
        usage.mkdir(mode=0o1777)
        usage.chmod(0o1777)
        (usage / "receiver.txt").touch()
        (usage / "receiver.txt").chmod(0o666)
        wrap_receiver(dep, usage / "receiver.txt")  # the link's sshd copies the wrapped config
        sshd, port = start_sshd_inside(dep)
        try:
            link = Link(dep, mnt, shell, port, usage)
            for rate in rates:
                shape(rate)
                wait_for(link)
                times: dict[str, list[float]] = {t: [] for t in TOOLS}
                cpu: dict[str, list[float]] = {
                    f"{t}_{end}": [] for t in ("dh", "dh_plain") for end in ("client", "receiver")
                }
                for r in range(options.runs):
                    one_run(link, src, n_files, r, times, cpu)
                    print(
                        f"{rate} run {r + 1}: "
                        + ", ".join(f"{t} {v[-1]:.2f}" for t, v in times.items()),
                        flush=True,
                    )
                results[rate] = {
                    "times": times,
                    "median": {t: statistics.median(v) for t, v in times.items()},
                    "cpu_seconds": {k: statistics.median(v) for k, v in cpu.items()},
                }
        finally:
            sshd.terminate()
            sshd.wait(timeout=10)
    report = {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
        "dataset": {"files": n_files, "bytes": n_bytes},
        "runs": options.runs,
        "results": results,
    }
    out_json.write_text(json.dumps(report, indent=2))
    print(f"\ndataset: {n_files} files, {n_bytes / MiB:.1f} MiB; medians of {options.runs}\n")
    print(table(results))
    print("\nCPU seconds (median; the client's includes its ssh):")
    for rate, found in results.items():
        print(f"  {rate}: " + ", ".join(f"{k} {v:.2f}" for k, v in found["cpu_seconds"].items()))
    print(f"\nresults: {out_json}")
    return 0


def wait_for(link: Link) -> None:
    deadline = time.monotonic() + 20
    while True:
        probe = subprocess.run(
            [*link.ssh_argv(), f"{link.shell}@{SRV_IP}", "true"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"ssh into the server's namespace does not work: {probe.stderr}")
        time.sleep(0.3)


if __name__ == "__main__":
    sys.exit(main())
