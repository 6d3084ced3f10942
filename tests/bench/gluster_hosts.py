"""The processor's throughput with the dropbox and study tree on GlusterFS, side by side with a
journaled ext4 (docs/admins/scale-out.md, "How far one host goes, and the next step").

    sudo flock /tmp/dittohead-fullsuite.lock .venv/bin/python -m tests.bench.gluster_hosts \
        [--runs 3] [--small 100x20x4096] [--large 6x4x33554432] [--json FILE]

Not a pytest test. Needs root and GlusterFS (as the cluster tier: ``tests/support/gluster.py``).
Everything written lives on one journaled ext4 image on a loop device (``tests.bench.run``'s
``loop_ext4``: the root disk here has no journal, docs/performance.md): the GlusterFS volume's
brick (glusterd in its own network namespace, reached over a veth pair) and, beside it, the
folder the ext4 cases use directly, so the two differ only by GlusterFS. The volume is set up
as several hosts need it: the client caches off and each "host" mounting it with the FUSE
timeouts at 0 (``gluster.coherent_mounts``).

Cases: {GlusterFS, ext4} x {small, large} x {1, 2 processors}, each case once per run, the
order rotated from run to run. A case is ``tests.bench.hosts.measure``: a fresh dropbox gets
its entries committed (untimed), then that many real ``dittohead-processor --once`` are
started at once, each with its own config, ``state_dir`` (on the ext4, the host's local
disk) and ``cluster.host``, and on GlusterFS each through its own mount; timed until the last
ends. Prints every case as it ends, then medians and min-max of uploads/s, files/s and MiB/s.
Unmounts, stops the volume, removes the namespace and the image afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.bench.hosts import host_configs, measure
from tests.bench.run import loop_ext4
from tests.support import gluster
from tests.support.server import make_server

FILESYSTEMS = ("glusterfs", "ext4")
HOSTS = (1, 2)


def shape(text: str) -> tuple[int, int, int]:
    """``ENTRIESxFILESxSIZE`` as three numbers."""
    entries, files, size = (int(n) for n in text.lower().split("x"))
    return entries, files, size


def one_case(
    fs: str, hosts: int, load: tuple[int, int, int], mnt: Path, mounts: list[Path], tag: str
) -> tuple[float, float]:
    """One measurement in a fresh dropbox: the seconds to commit, and to process."""
    entries, files, size = load
    local = mnt / "local" / tag
    local.mkdir(parents=True)
    if fs == "ext4":
        top = mnt / "ext4" / tag
        views = [top] * hosts
    else:
        top = mounts[0] / tag
        views = [mounts[i] / tag for i in range(hosts)]
    top.mkdir(parents=True)
    try:
        server = make_server(top)
        return measure(server, host_configs(server, views, local), entries, files, size)
    finally:
        shutil.rmtree(top)
        shutil.rmtree(local)


def summary(results: list[dict[str, Any]], loads: dict[str, tuple[int, int, int]]) -> str:
    lines = [
        "| file system | load | processors | uploads/s | files/s | MiB/s | s (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for load, (entries, files, size) in loads.items():
        for fs in FILESYSTEMS:
            for hosts in HOSTS:
                secs = [
                    r["seconds"]
                    for r in results
                    if (r["fs"], r["load"], r["hosts"]) == (fs, load, hosts)
                ]
                if not secs:
                    continue

                def cell(per_second: float, fmt: str, secs: list[float] = secs) -> str:
                    rates = sorted(per_second / s for s in secs)
                    med = statistics.median(rates)
                    return f"{med:{fmt}} ({rates[0]:{fmt}}-{rates[-1]:{fmt}})"

                lines.append(
                    f"| {fs} | {load} {entries}x{files}x{size} B | {hosts} "
                    f"| {cell(entries, '.1f')} | {cell(entries * files, '.0f')} "
                    f"| {cell(entries * files * size / 2**20, '.0f')} "
                    f"| {statistics.median(secs):.2f} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--small", type=shape, default=(100, 20, 4096))
    parser.add_argument("--large", type=shape, default=(6, 4, 32 << 20))
    parser.add_argument("--image-gib", type=int, default=6)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    why = "this benchmark needs root (mounts, namespaces)" if os.geteuid() else gluster.missing()
    if why:
        print(why, file=sys.stderr)
        return 1
    loads = {"small": args.small, "large": args.large}
    cases = [(fs, load, hosts) for fs in FILESYSTEMS for load in loads for hosts in HOSTS]
    run_dir = Path(tempfile.mkdtemp(prefix="dittohead-bench-gluster-"))
    results: list[dict[str, Any]] = []
    try:
        with (
            loop_ext4(run_dir / "fs.img", run_dir / "base", args.image_gib << 30) as mnt,
            gluster.volume(copies=0, under=mnt) as vol,
            gluster.coherent_mounts(vol, max(HOSTS)) as mounts,
        ):
            for r in range(args.runs):
                k = r * len(cases) // args.runs
                for fs, load, hosts in cases[k:] + cases[:k]:
                    tag = f"r{r}-{fs}-{load}-{hosts}"
                    committed, seconds = one_case(fs, hosts, loads[load], mnt, mounts, tag)
                    entries = loads[load][0]
                    results.append(
                        {"run": r, "fs": fs, "load": load, "hosts": hosts, "seconds": seconds,
                         "commit_seconds": committed}
                    )  # fmt: skip
                    print(
                        f"run {r} {fs:9} {load:5} {hosts} processor(s): {seconds:6.2f} s, "
                        f"{entries / seconds:6.1f} uploads/s (committing took {committed:.1f} s)",
                        flush=True,
                    )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(summary(results, loads))
    if args.json:
        args.json.write_text(json.dumps({"loads": loads, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
