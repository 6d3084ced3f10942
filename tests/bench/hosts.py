"""How far the processor goes, and what a second processor on the same dropbox adds.

    python -m tests.bench.hosts BASE [--hosts 1 2] [--entries 200] [--files 20] [--size 4096]

BASE should be a fresh journaled ext4 (a loop-mounted image: see docs/performance.md on the
root disk's hangover). For each host count, a fresh dropbox under BASE gets `--entries`
committed entries of `--files` files of `--size` bytes each (uploaders by uid, accounts
mocked as in tests/unit/receiver/processor/test_multihost.py); then that many real
``dittohead-processor --once`` processes, each with its own config and state_dir, are started
at once and timed until the last exits. Prints uploads/s, files/s and MiB/s per host count.
Run as root (the entries are chowned to their uploaders).

`tests/bench/gluster_hosts.py` runs the same measurement with the dropbox and study tree on a
GlusterFS volume, each processor through a mount of its own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.support.hosts import UPLOADERS, commit_as, start
from tests.support.server import Server, make_server, write_config


def host_configs(server: Server, views: list[Path], local: Path) -> list[Path]:
    """One config per host, `views[i]` being where host i sees ``server.base`` (its own mount of
    a shared file system, or the same folder): the server's dropbox and study tree through that
    view, and the host's own ``state_dir``, socket and ``cluster.host`` below `local` (the
    host's local disk, as docs/admins/scale-out.md asks)."""
    doc: dict[str, Any] = yaml.safe_load(server.config_path.read_text())
    paths = []
    for i, view in enumerate(views):
        name = f"h{i}"
        mine = dict(doc)
        mine["dropbox"] = str(view / Path(doc["dropbox"]).relative_to(server.base))
        mine["studies"] = {
            study: {
                **spec,
                "destination": str(view / Path(spec["destination"]).relative_to(server.base)),
            }
            for study, spec in doc["studies"].items()
        }
        mine["state_dir"] = str(local / f"state-{name}")
        mine["socket"] = str(local / f"run-{name}" / "processor.sock")
        mine["cluster"] = {"host": name, "lease": "5m"}
        path = local / f"{name}.yaml"
        write_config(path, mine)
        paths.append(path)
    return paths


def measure(
    server: Server, configs: list[Path], entries: int, files: int, size: int
) -> tuple[float, float]:
    """Commit `entries` entries of `files` files of `size` random bytes into the server's inbox,
    write everything back, then start one ``dittohead-processor --once`` per config at once:
    the seconds it took to commit, and until the last processor ended (the inbox then empty)."""
    began = time.monotonic()
    for n in range(entries):
        data = {f"s{n}/f{i}.bin": os.urandom(size) for i in range(files)}
        commit_as(server, UPLOADERS[n % len(UPLOADERS)], data, "brogden-a")
    os.sync()
    committed = time.monotonic() - began
    began = time.monotonic()
    procs = [start(c) for c in configs]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(err.decode())
    seconds = time.monotonic() - began
    left = os.listdir(server.inbox)
    if left:
        raise RuntimeError(f"left in the inbox: {left}")
    return committed, seconds


def run(base: Path, hosts: int, entries: int, files: int, size: int) -> tuple[float, int]:
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    server = make_server(base)
    configs = host_configs(server, [base] * hosts, base)
    _, seconds = measure(server, configs, entries, files, size)
    return seconds, entries


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("base", type=Path)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--entries", type=int, default=200)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    total = args.entries * args.files * args.size
    for hosts in args.hosts:
        seconds, entries = run(args.base / f"h{hosts}", hosts, args.entries, args.files, args.size)
        print(
            f"{hosts} host(s): {seconds:.2f} s, {entries / seconds:.1f} uploads/s, "
            f"{entries * args.files / seconds:.0f} files/s, {total / seconds / 2**20:.0f} MiB/s"
        )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
