"""``make bench``: dittohead side by side with tar over ssh and rsync, on the real sshd tier.

Not a pytest test (nothing here is named ``test_*``). Needs root: it creates Unix users, a
deployment and an OpenSSH sshd with ``tests.integration.harness.deployment``, plus one plain
shell user (in no uploader group, so sshd does not force the receiver on them) for the peers.

Everything that is written lives on a journaled ext4 image mounted through a loop device,
because this kind of machine's root disk is ext4 without a journal, where re-creating a tree
that was just deleted runs 8-15x slower (docs/design.md, "Performance by design").

What is measured, per dataset, tools alternating within each run, medians over the runs:

* fresh send: ``dittohead send`` until its receipt (carried by OpenSSH's ``ssh``, as on any
  PC that has it, and again with ``DITTOHEAD_SSH=builtin``, the client's own asyncssh);
  ``tar | ssh 'tar -x && sync'``; ``rsync -a`` over the same sshd; each into an empty
  destination;
* re-send with nothing changed (dittohead with its state file; rsync re-run) and with 1% of
  the files changed;
* finalizing: the processor (``dittohead-processor --once`` as the service account) vs
  ``cp -a`` + ``sha256sum`` of every file + ``sync``;
* peak RSS (``/usr/bin/time -f %M``) of the client, the processor and the receiver; the
  receiver runs under sshd as the collector, so for the benchmark the ForceCommand is wrapped
  in ``/usr/bin/time -a -o FILE`` (sshd reloaded with SIGHUP); the wrapper only waits.

With ``--sends-only``, each run makes only dittohead's fresh sends (in parts and as one upload,
and the baseline's), each entry taken out again: enough runs to see a few percent through this
machine's noise in minutes. With ``--baseline CHECKOUT`` (another checkout whose ``.venv`` is
built, say ``git worktree add /tmp/base main`` and ``make lint`` there), each fresh send is
also made by that checkout's client, as two parts and as one upload, rotated with the rest: a
client change is then weighed within one run (``dh_send_baseline / dh_send``). The server side
is this checkout's.

Usage: ``python tests/bench/run.py [--quick] [--runs N] [--only L,S,M] [--json FILE]
[--baseline CHECKOUT] [--sends-only]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.integration.harness import Deployment, deployment, run  # noqa: E402

CIPHER = "aes128-gcm@openssh.com"
MiB = 1 << 20
KiB = 1 << 10
TIME = "/usr/bin/time"


# --------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class Spec:
    name: str
    what: str
    make: Callable[[Path, random.Random], None]


def _write_random(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(os.urandom(n))
            left -= n


def make_large(count: int, size: int) -> Callable[[Path, random.Random], None]:
    def make(root: Path, rng: random.Random) -> None:
        (root / "scans").mkdir(parents=True)
        for i in range(count):
            _write_random(root / "scans" / f"run{i:02d}.dat", size)

    return make


def make_small(count: int) -> Callable[[Path, random.Random], None]:
    def make(root: Path, rng: random.Random) -> None:
        # Three levels: subject / session / task, 5 x 5 x 8 leaf folders.
        leaves = [root / f"sub{a}" / f"ses{b}" / f"task{c}" for a in range(5) for b in range(5)
                  for c in range(8)]  # fmt: skip
        for leaf in leaves:
            leaf.mkdir(parents=True)
        for i in range(count):
            size = rng.randint(1 * KiB, 16 * KiB)
            (leaves[i % len(leaves)] / f"trial{i:05d}.txt").write_bytes(os.urandom(size))

    return make


def make_medium(count: int) -> Callable[[Path, random.Random], None]:
    def make(root: Path, rng: random.Random) -> None:
        for d in range(4):
            (root / f"block{d}").mkdir(parents=True)
        for i in range(count):
            _write_random(root / f"block{i % 4}" / f"rec{i:03d}.acq", rng.randint(1, 20) * MiB)

    return make


def specs(quick: bool) -> dict[str, Spec]:
    if quick:
        return {
            "L": Spec("L", "2 x 64 MiB random", make_large(2, 64 * MiB)),
            "S": Spec("S", "2,000 files of 1-16 KiB, 3-level tree", make_small(2000)),
            "M": Spec("M", "20 files of 1-20 MiB", make_medium(20)),
        }
    return {
        "L": Spec("L", "2 x 512 MiB random", make_large(2, 512 * MiB)),
        "S": Spec("S", "20,000 files of 1-16 KiB, 3-level tree", make_small(20000)),
        "M": Spec("M", "100 files of 1-20 MiB", make_medium(100)),
    }


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def change_one_percent(root: Path, rng: random.Random) -> int:
    """Overwrite 4 KiB in the middle of 1% of the files (at least one); return how many."""
    files = files_of(root)
    chosen = rng.sample(files, max(1, round(len(files) / 100)))
    for path in chosen:
        size = path.stat().st_size
        with path.open("r+b") as f:
            f.seek(max(0, size // 2 - 2048))
            f.write(os.urandom(min(4096, size)))
    return len(chosen)


# --------------------------------------------------------------------------- machinery


@contextmanager
def loop_ext4(image: Path, mountpoint: Path, size: int) -> Iterator[Path]:
    """A journaled ext4 file system on a loop device, unmounted and removed afterwards.

    The loop device uses direct I/O: with the default buffered loop, what this file system
    writes back lands as dirty pages of the image file on the root disk, where the next
    ``syncfs`` (the receiver's, or the processor's) pays for whatever earlier steps left.
    """
    with image.open("wb") as f:
        f.truncate(size)
    run("mkfs.ext4", "-q", "-F", "-O", "has_journal", image)
    device = run("losetup", "--find", "--show", "--direct-io=on", image).stdout.strip()
    try:
        mountpoint.mkdir()
        run("mount", device, mountpoint)
        try:
            yield mountpoint
        finally:
            subprocess.run(["sync"], check=False)
            for _ in range(10):
                if subprocess.run(["umount", str(mountpoint)], check=False).returncode == 0:
                    break
                time.sleep(1)
            else:
                subprocess.run(["umount", "-l", str(mountpoint)], check=False)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
        image.unlink(missing_ok=True)


def wipe(path: Path) -> None:
    """Empty `path` (kept, with its owner and mode)."""
    if not path.exists():
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def settle(*reads: Path) -> None:
    """Untimed, before every timed step: write back what earlier steps left dirty, so the next
    step that syncs (the receiver, tar && sync, the processor, cp && sync) pays only for its own
    data; and read every file under `reads` (what the step will read), so that each tool finds
    its input in the page cache.

    The second matters on these machines: the kernel pages out file data nobody touched for
    about a minute (DAMON's proactive reclaim, ``/sys/kernel/mm/damon``), long before memory is
    short. Without it, whichever tool first read a dataset after that read it from the disk:
    dittohead's S send swung between 1.1 and 1.9 s, with its receiver waiting up to 0.8 s for
    a client that waited for the disk."""
    subprocess.run(["sync"], check=False)
    buf = bytearray(1 << 20)
    for root in reads:
        for path in files_of(root):
            with path.open("rb", buffering=0) as f:
                while f.readinto(buf):
                    pass


def timed(
    argv: list[str], *, shell: bool = False, rss: Path | None = None
) -> tuple[float, tuple[int, float]]:
    """Run, fail loudly on a non-zero status; return (seconds, (peak RSS KiB, CPU seconds)),
    the usage only when `rss` names a file for /usr/bin/time (else zeros)."""
    if rss is not None:
        argv = [TIME, "-f", USAGE, "-o", str(rss), *argv]
    start = time.perf_counter()
    done = subprocess.run(
        argv if not shell else ["bash", "-c", argv[0]],
        capture_output=True, text=True, check=False, timeout=3600,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv!r} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed, (last_usage(rss.read_text()) if rss is not None else (0, 0.0))


USAGE = "usage %M %U %S"  # peak RSS (KiB), user and system CPU seconds


def usage_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith("usage "))


def last_usage(text: str) -> tuple[int, float]:
    """(peak RSS KiB, CPU seconds) from the last line /usr/bin/time wrote with USAGE."""
    found = re.findall(r"^usage (\d+) ([\d.]+) ([\d.]+)$", text, re.MULTILINE)
    if not found:
        return 0, 0.0
    rss, user, system = found[-1]
    return int(rss), float(user) + float(system)


@dataclass
class Bench:
    dep: Deployment
    mnt: Path
    shell: str
    rss_dir: Path
    baseline: Path | None = None  # another checkout's interpreter (--baseline)
    sends_only: bool = False  # --sends-only
    results: dict[str, Any] = field(default_factory=dict)

    # -- the shell user's ssh, as a lab would type it
    def ssh_argv(self) -> list[str]:
        return [
            "ssh", "-F", "none", "-p", str(self.dep.port), "-i", str(self.dep.key(self.shell)),
            "-o", f"UserKnownHostsFile={self.dep.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-c", CIPHER,
        ]  # fmt: skip

    def fresh_dest(self, name: str) -> Path:
        dest = self.mnt / "peers" / name
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        shutil.chown(dest, self.shell, self.shell)
        return dest

    def tar_ssh(self, src: Path, dest: Path, sync: bool = True) -> float:
        remote = f"tar -xf - -C {shlex.quote(str(dest))}" + (" && sync" if sync else "")
        ssh = " ".join(shlex.quote(a) for a in self.ssh_argv())
        cmd = (
            f"set -o pipefail; tar -C {shlex.quote(str(src))} -cf - . | "
            f"{ssh} {self.shell}@127.0.0.1 {shlex.quote(remote)}"
        )
        return timed([cmd], shell=True)[0]

    def rsync(self, src: Path, dest: Path) -> float:
        e = " ".join(shlex.quote(a) for a in self.ssh_argv())
        return timed(["rsync", "-a", "-e", e, f"{src}/", f"{self.shell}@127.0.0.1:{dest}/"])[0]

    def dh_send(
        self,
        src: Path,
        state: Path,
        ssh: str | None = None,
        one_part: bool = False,
        python: Path | None = None,
    ) -> tuple[float, tuple[int, float], tuple[int, float], dict[str, Any] | None]:
        """(seconds, client usage, receiver usage or zeros, receipt or None); a usage is
        (peak RSS KiB, CPU seconds; the client's includes its ssh). `ssh` is DITTOHEAD_SSH
        (None: the client uses OpenSSH's ssh, as it does wherever that is installed);
        `one_part` sends everything as one upload (DITTOHEAD_BATCH), to weigh the parts;
        `python` runs another checkout's client (--baseline)."""
        dep = self.dep
        receiver_log = self.rss_dir / "receiver.txt"
        before = usage_lines(receiver_log.read_text())
        client_rss = self.rss_dir / "client.txt"
        argv = [
            str(python or dep.python), "-I", "-m", "dittohead.client.cli", "send",
            "--host", "127.0.0.1", "--port", str(dep.port), "--user", dep.collector,
            "--identity", str(dep.key(dep.collector)), "--known-hosts", str(dep.known_hosts),
            "--state", str(state), "--study", dep.study, "--source", "brogden-a", "--json",
            str(src),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "DITTOHEAD_SSH"}
        if ssh is not None:
            env["DITTOHEAD_SSH"] = ssh
        if one_part:
            env["DITTOHEAD_BATCH"] = "100000000,1000000000000000"
        start = time.perf_counter()
        done = subprocess.run(
            [TIME, "-f", USAGE, "-o", str(client_rss), *argv],
            capture_output=True, text=True, check=False, timeout=3600, env=env,
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"dittohead send failed: {done.stderr[-2000:]}")
        log_text = receiver_log.read_text()
        ran = usage_lines(log_text) > before  # no receiver when nothing was new
        receiver = last_usage(log_text) if ran else (0, 0.0)
        text = done.stdout.strip().splitlines()
        receipt = json.loads(text[-1]) if text else None
        return elapsed, last_usage(client_rss.read_text()), receiver, receipt

    def dh_process(self) -> tuple[float, tuple[int, float]]:
        dep = self.dep
        argv = [
            "setpriv", f"--reuid={dep.service}", f"--regid={dep.service}", "--init-groups",
            str(dep.python), "-I", "-m", "dittohead.receiver.processor.service", "--once",
            "--config", str(dep.config_path),
        ]  # fmt: skip
        seconds, usage = timed(argv, rss=self.rss_dir / "processor.txt")
        if os.listdir(dep.inbox):
            raise RuntimeError(f"the processor left entries in the inbox: {os.listdir(dep.inbox)}")
        return seconds, usage

    def cp_sha(self, src: Path, dest: Path) -> float:
        cmd = (
            f"set -o pipefail; cp -a {shlex.quote(str(src))}/. {shlex.quote(str(dest))}/ && "
            f"find {shlex.quote(str(dest))} -type f -print0 | xargs -0 sha256sum >/dev/null && sync"
        )
        return timed([cmd], shell=True)[0]

    def reset_dittohead(self, state: Path) -> None:
        """An empty study tree and ledger, an empty dropbox, no client state.

        The processor keeps every finalized entry in ``done/`` (only root purges it); emptied
        here too, or five runs of L and M would keep 10 GiB of originals on the image."""
        wipe(self.dep.destination)
        for folder in ("inbox", "processing", "done"):
            wipe(self.dep.inbox.parent / folder)
        state.unlink(missing_ok=True)


def wrap_receiver(dep: Deployment, rss_log: Path) -> None:
    """Run the ForceCommand under /usr/bin/time so the receiver's peak RSS is logged."""
    config = dep.base / "sshd_config"
    text = config.read_text()
    wrapped = text.replace("ForceCommand ", f"ForceCommand {TIME} -f '{USAGE}' -a -o {rss_log} ", 1)
    assert wrapped != text, "no ForceCommand in the harness's sshd_config"
    config.write_text(wrapped)
    check = run("/usr/sbin/sshd", "-t", "-f", config, check=False)
    assert check.returncode == 0, check.stderr
    assert dep.sshd is not None
    dep.sshd.send_signal(signal.SIGHUP)  # sshd -D re-executes itself and rereads its config


def add_shell_user(dep: Deployment) -> str:
    homes = dep.base / "home"
    shell = dep.accounts.user("shell", homes)  # no groups: not matched by the ForceCommand block
    keys = dep.base / "keys"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / shell)
    (keys / f"{shell}.authorized").write_text((keys / f"{shell}.pub").read_text())
    return shell


def wait_for_ssh(bench: Bench) -> None:
    deadline = time.monotonic() + 20
    while True:
        probe = subprocess.run(
            [*bench.ssh_argv(), f"{bench.shell}@127.0.0.1", "true"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"ssh as the shell user does not work: {probe.stderr}")
        time.sleep(0.3)


# --------------------------------------------------------------------------- the benchmark


def run_rotated(steps: list[Callable[[], None]], r: int, *reads: Path) -> None:
    """Run `steps` starting with number ``r % len(steps)``, so that no tool always goes first
    (or last), each after an untimed `settle` that reads the files under `reads`."""
    k = r % len(steps)
    for step in steps[k:] + steps[:k]:
        settle(*reads)
        step()


def one_run(
    b: Bench, spec: Spec, src: Path, state: Path, r: int, runs: int,
    times: dict[str, list[float]], rss: dict[str, int], cpu: dict[str, list[float]],
    rng: random.Random, n_files: int,
) -> int:  # fmt: skip
    """One run of every measurement, tools in a rotating order; return the files changed."""
    # Fresh sends, in a rotating order so no tool always goes first (or last).
    tar_dest = b.fresh_dest(f"tar-{spec.name}")
    tar2_dest = b.fresh_dest(f"tar2-{spec.name}")
    rsync_dest = b.fresh_dest(f"rsync-{spec.name}")
    b.reset_dittohead(state)
    subprocess.run(["sync"], check=False)

    def send(
        key: str,
        files: int,
        *,
        with_state: Path = state,
        ssh: str | None = None,
        one_part: bool = False,
        python: Path | None = None,
    ) -> tuple[dict[str, Any], float, float]:
        """One timed `dittohead send` of `src` that must report `files` files; peak RSS noted.
        Returns (receipt, client CPU seconds, receiver CPU seconds)."""
        seconds, client, receiver, receipt = b.dh_send(
            src, with_state, ssh=ssh, one_part=one_part, python=python
        )
        assert receipt is not None and receipt["files"] == files, receipt
        times[key].append(seconds)
        rss["client"] = max(rss["client"], client[0])
        rss["receiver"] = max(rss["receiver"], receiver[0])
        return receipt, client[1], receiver[1]

    def dh() -> None:
        _, client_cpu, receiver_cpu = send("dh_send", n_files)
        cpu["client_send"].append(client_cpu)
        cpu["receiver_send"].append(receiver_cpu)

    def dh_builtin() -> None:
        # The same send through the client's built-in asyncssh (a PC without OpenSSH's ssh);
        # its entry is taken out of the inbox again so the processor step finds one upload.
        builtin_state = state.with_name(f"builtin-{state.name}")
        receipt, client_cpu, _ = send("dh_send_builtin", n_files, with_state=builtin_state,
                                      ssh="builtin")  # fmt: skip
        cpu["client_send_builtin"].append(client_cpu)
        for upload in receipt.get("uploads", [receipt["upload"]]):  # one per batch
            shutil.rmtree(b.dep.inbox / upload)
        builtin_state.unlink()

    def dh_one_part() -> None:
        # The same send as one upload, whatever its size: what cutting it into parts costs.
        # Its entry is taken out of the inbox again, as the built-in client's is.
        one_state = state.with_name(f"one-part-{state.name}")
        receipt, _, _ = send("dh_send_one_part", n_files, with_state=one_state, one_part=True)
        for upload in receipt.get("uploads", [receipt["upload"]]):
            shutil.rmtree(b.dep.inbox / upload)
        one_state.unlink()

    def baseline(key: str, one_part: bool, python: Path | None) -> Callable[[], None]:
        def step() -> None:
            # The same send by the --baseline checkout's client (or, with --sends-only, this
            # one's); its entry taken out again.
            other_state = state.with_name(f"{key}-{state.name}")
            receipt, _, _ = send(key, n_files, with_state=other_state, one_part=one_part,
                                 python=python)  # fmt: skip
            for upload in receipt.get("uploads", [receipt["upload"]]):
                shutil.rmtree(b.dep.inbox / upload)
            other_state.unlink()

        return step

    def tar() -> None:
        times["tar_ssh"].append(b.tar_ssh(src, tar_dest))

    def tar_nosync() -> None:
        times["tar_ssh_nosync"].append(b.tar_ssh(src, tar2_dest, sync=False))

    def rs() -> None:
        times["rsync_fresh"].append(b.rsync(src, rsync_dest))

    others = []
    if b.baseline is not None:
        others = [
            baseline("dh_send_baseline", False, b.baseline),
            baseline("dh_send_baseline_one_part", True, b.baseline),
        ]
    if b.sends_only:
        # dittohead's fresh sends alone, many runs in the time of a few (--sends-only).
        steps = [baseline("dh_send", False, None), dh_one_part, *others]
        run_rotated(steps, r, src)
        print(
            f"[{spec.name}] run {r + 1}/{runs}: "
            + ", ".join(f"{k} {v[-1]:.2f}" for k, v in times.items() if v),
            flush=True,
        )
        return 0
    run_rotated([dh, tar, rs, tar_nosync, dh_builtin, dh_one_part, *others], r, src)
    shutil.rmtree(tar2_dest)

    # Finalizing: the processor on the entry just sent vs cp -a + sha256sum + sync.
    cp_dest = b.fresh_dest(f"cp-{spec.name}")
    subprocess.run(["sync"], check=False)

    def proc() -> None:
        seconds, usage = b.dh_process()
        times["dh_process"].append(seconds)
        rss["processor"] = max(rss["processor"], usage[0])
        cpu["processor"].append(usage[1])

    def cp() -> None:
        times["cp_sha256_sync"].append(b.cp_sha(src, cp_dest))

    run_rotated([proc, cp], r, src, b.dep.inbox)
    shutil.rmtree(cp_dest)

    # Nothing changed: dittohead decides from its state file; rsync re-runs.
    def dh_none() -> None:
        send("dh_nochange", 0)

    def rs_none() -> None:
        times["rsync_nochange"].append(b.rsync(src, rsync_dest))

    run_rotated([dh_none, rs_none], r, src)

    # 1% of the files changed.
    changed = change_one_percent(src, rng)

    def dh_some() -> None:
        send("dh_change1", changed)

    def rs_some() -> None:
        times["rsync_change1"].append(b.rsync(src, rsync_dest))

    run_rotated([dh_some, rs_some], r, src)
    print(
        f"[{spec.name}] run {r + 1}/{runs}: "
        + ", ".join(f"{k} {v[-1]:.2f}" for k, v in times.items() if v),
        flush=True,
    )
    return changed


def generate(spec: Spec, src: Path, rng: random.Random) -> tuple[int, int, float]:
    """A fresh copy of the dataset in `src`: (files, bytes, seconds it took)."""
    if src.exists():
        shutil.rmtree(src)
    t0 = time.perf_counter()
    spec.make(src, rng)
    all_files = files_of(src)
    total = sum(p.stat().st_size for p in all_files)
    subprocess.run(["sync"], check=False)
    return len(all_files), total, time.perf_counter() - t0


def bench_dataset(b: Bench, spec: Spec, runs: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    src = b.mnt / "data" / spec.name
    state = b.mnt / f"state-{spec.name}.json"
    times: dict[str, list[float]] = {
        k: []
        for k in (
            "dh_send", "dh_send_builtin", "dh_send_one_part", "tar_ssh", "tar_ssh_nosync",
            "rsync_fresh", "dh_nochange", "rsync_nochange", "dh_change1", "rsync_change1",
            "dh_process", "cp_sha256_sync",
            *(("dh_send_baseline", "dh_send_baseline_one_part") if b.baseline else ()),
        )
    }  # fmt: skip
    rss = {"client": 0, "receiver": 0, "processor": 0}
    cpu: dict[str, list[float]] = {
        "client_send": [], "client_send_builtin": [], "receiver_send": [], "processor": [],
    }  # fmt: skip
    changed = n_files = total = 0
    for r in range(runs):
        # Fresh data every run: new random bytes (and, for S and M, new sizes), so no run
        # profits from what an earlier one left in a cache or in a destination.
        n_files, total, took = generate(spec, src, rng)
        print(
            f"[{spec.name}] {spec.what}: {n_files} files, {total / MiB:.0f} MiB "
            f"(generated in {took:.1f} s)",
            flush=True,
        )
        changed = one_run(b, spec, src, state, r, runs, times, rss, cpu, rng, n_files)
    b.reset_dittohead(state)
    for name in ("tar", "rsync"):
        shutil.rmtree(b.mnt / "peers" / f"{name}-{spec.name}", ignore_errors=True)
    shutil.rmtree(src)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    pairs = [
        ("tar_ssh", "dh_send"), ("tar_ssh_nosync", "dh_send"), ("rsync_fresh", "dh_send"),
        ("tar_ssh", "dh_send_builtin"), ("rsync_fresh", "dh_send_builtin"),
        ("dh_send_one_part", "dh_send"), ("rsync_nochange", "dh_nochange"),
        ("rsync_change1", "dh_change1"), ("cp_sha256_sync", "dh_process"),
        ("dh_send_baseline", "dh_send"), ("dh_send_baseline_one_part", "dh_send_baseline"),
        ("tar_ssh", "dh_send_baseline"), ("rsync_fresh", "dh_send_baseline"),
    ]  # fmt: skip
    return {
        "dataset": spec.what,
        "files": n_files,  # of the last run's data (S and M sizes vary per run)
        "bytes": total,
        "changed_files": changed,
        "runs": times,
        "median_s": med,
        # (--sends-only and a run without --baseline leave out what they did not measure)
        "ratios": {f"{a} / {b}": med[a] / med[b] for a, b in pairs if a in med and b in med},
        "peak_rss_mib": {k: v / 1024 for k, v in rss.items()},
        # user + system CPU seconds of the fresh send's client and receiver, and the processor
        "cpu_s_median": {k: statistics.median(v) for k, v in cpu.items() if v},
    }


#: (dataset, ratio or rss key, comparison, threshold, description)
TARGETS: list[tuple[str, str, str, float, str]] = [
    ("L", "tar_ssh / dh_send", ">=", 1.0, "large send >= 1.0x tar|ssh|tar"),
    ("S", "rsync_fresh / dh_send", ">=", 1.0, "small send >= 1.0x rsync fresh"),
    ("S", "tar_ssh / dh_send", ">=", 0.7, "small send >= 0.7x tar|ssh|tar"),
    *[(d, "rsync_nochange / dh_nochange", ">=", 2.0, "no-change <= 0.5x rsync's") for d in "LSM"],
    *[(d, "cp_sha256_sync / dh_process", ">=", 1.0, "processor >= 1.0x cp+sha256") for d in "LSM"],
    *[
        (d, f"rss:{p}", "<", 100.0, f"{p} RSS < 100 MiB")
        for d in "LSM"
        for p in ("client", "receiver", "processor")
    ],
]


def judge(results: dict[str, Any]) -> list[dict[str, Any]]:
    verdicts = []
    for dataset, key, op, threshold, what in TARGETS:
        if dataset not in results:
            continue
        res = results[dataset]
        if key.startswith("rss:"):
            value = res["peak_rss_mib"][key[4:]]
        elif key in res["ratios"]:
            value = res["ratios"][key]
        else:
            continue  # not measured (--sends-only)
        met = value >= threshold if op == ">=" else value < threshold
        verdicts.append(
            {
                "dataset": dataset,
                "target": what,
                "measure": key,
                "value": value,
                "threshold": f"{op} {threshold}",
                "met": met,
            }
        )
    return verdicts


def _cell(text: str) -> str:
    """`text` as one Markdown table cell: its own ``|`` (as in "tar | ssh") would split it."""
    return text.replace("|", "\\|")


def table(results: dict[str, Any], verdicts: list[dict[str, Any]]) -> str:
    names = list(results)
    rows = [
        ("dittohead send (to receipt)", "dh_send"),
        ("the same, built-in asyncssh client", "dh_send_builtin"),
        ("the same as one upload (no parts)", "dh_send_one_part"),
        ("tar | ssh aes128-gcm 'tar -x && sync'", "tar_ssh"),
        ("the same without sync", "tar_ssh_nosync"),
        ("rsync -a (fresh)", "rsync_fresh"),
        ("dittohead re-send, nothing changed", "dh_nochange"),
        ("rsync -a re-run, nothing changed", "rsync_nochange"),
        ("dittohead re-send, 1% changed", "dh_change1"),
        ("rsync -a re-run, 1% changed", "rsync_change1"),
        ("processor --once (finalize)", "dh_process"),
        ("cp -a + sha256sum + sync", "cp_sha256_sync"),
        ("--baseline's client: dittohead send", "dh_send_baseline"),
        ("--baseline's client: as one upload", "dh_send_baseline_one_part"),
    ]
    rows = [row for row in rows if row[1] in results[names[0]]["median_s"]]
    out = ["| seconds (median) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key in rows:
        cells = [f"{results[n]['median_s'][key]:.2f}" for n in names]
        out.append(f"| {_cell(label)} | " + " | ".join(cells) + " |")
    out += ["", "| ratio (peer / dittohead, higher is better) | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names)]  # fmt: skip
    for key in results[names[0]]["ratios"]:
        cells = [f"{results[n]['ratios'][key]:.2f}" for n in names]
        out.append(f"| {key} | " + " | ".join(cells) + " |")
    out += ["", "| peak RSS (MiB) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key in ("client", "receiver", "processor"):
        cells = [f"{results[n]['peak_rss_mib'][key]:.0f}" for n in names]
        out.append(f"| {key} | " + " | ".join(cells) + " |")
    out += ["", "| CPU seconds, user+sys (median) | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names)]  # fmt: skip
    for key in ("client_send", "client_send_builtin", "receiver_send", "processor"):
        cells = [f"{results[n]['cpu_s_median'].get(key, 0.0):.2f}" for n in names]
        out.append(f"| {key} | " + " | ".join(cells) + " |")
    out += ["", "| target | dataset | value | met |", "|---|---|---:|---|"]
    for v in verdicts:
        out.append(
            f"| {_cell(v['target'])} | {v['dataset']} | {v['value']:.2f} | "
            f"{'yes' if v['met'] else '**no**'} |"
        )
    return "\n".join(out)


def baseline_python(checkout: Path | None) -> Path | None:
    """The interpreter of `checkout`'s .venv (its client is that checkout's code)."""
    if checkout is None:
        return None
    python = checkout.resolve() / ".venv" / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} does not exist: build {checkout}'s .venv first (make lint)")
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small datasets (a smoke run)")
    parser.add_argument("--runs", type=int, default=5, help="runs per dataset (default 5)")
    parser.add_argument("--only", default="L,S,M", help="datasets, e.g. L,S (default L,S,M)")
    parser.add_argument("--json", type=Path, help="results file (default: in the run dir)")
    parser.add_argument("--image-gib", type=int, default=0, help="size of the ext4 image")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout (with its .venv) whose client to compare"
    )
    parser.add_argument(
        "--sends-only",
        action="store_true",
        help="only dittohead's fresh sends (two parts, one upload, and --baseline's): an A/B "
        "of the client with many runs",
    )
    options = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("make bench needs root (users, sshd, a loop mount)", file=sys.stderr)
        return 1
    chosen = [n.strip() for n in options.only.split(",") if n.strip()]
    all_specs = specs(options.quick)
    unknown = [n for n in chosen if n not in all_specs]
    if unknown:
        parser.error(f"unknown datasets {unknown}; choose from L, S, M")
    run_dir = Path(tempfile.mkdtemp(prefix="dittohead-bench-"))
    run_dir.chmod(0o755)
    out_json = options.json or run_dir / "results.json"
    image_gib = options.image_gib or (4 if options.quick else 24)
    started = datetime.now(UTC)
    results: dict[str, Any] = {}
    # The harness stops sshd and removes the users when the block ends; then the image goes.
    image = run_dir / "fs.img"
    with (
        loop_ext4(image, run_dir / "base", image_gib << 30) as mnt,
        contextmanager(deployment)(mnt) as dep,
    ):
        rss_dir = mnt / "rss"
        rss_dir.mkdir(mode=0o1777)
        rss_dir.chmod(0o1777)
        receiver_log = rss_dir / "receiver.txt"
        receiver_log.touch()
        receiver_log.chmod(0o666)
        shell = add_shell_user(dep)
        wrap_receiver(dep, receiver_log)
        b = Bench(dep, mnt, shell, rss_dir, baseline_python(options.baseline), options.sends_only)
        wait_for_ssh(b)
        for i, name in enumerate(chosen):
            results[name] = bench_dataset(b, all_specs[name], options.runs, seed=1000 + i)
    verdicts = judge(results)
    report = {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "ssh": subprocess.run(
                ["ssh", "-V"], capture_output=True, text=True, check=False
            ).stderr.strip(),
            "rsync": subprocess.run(
                ["rsync", "--version"], capture_output=True, text=True, check=False
            ).stdout.splitlines()[0],
            "transport": "loopback 127.0.0.1, OpenSSH sshd, cipher aes128-gcm",
            "filesystem": "journaled ext4 on a loop device (image on the root disk)",
        },
        "quick": options.quick,
        "runs": options.runs,
        "results": results,
        "targets": verdicts,
    }
    out_json.write_text(json.dumps(report, indent=2))
    print()
    print(table(results, verdicts))
    print(f"\nresults: {out_json}\nrun dir: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
