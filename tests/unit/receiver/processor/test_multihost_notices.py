"""Disk levels and silent stations with several hosts on one dropbox (docs/admins/scale-out.md,
"What is per host"): each host has its own ``state_dir`` and outbox, the decision is shared
(``<dropbox>/.notices/``), so one crossing or one silence is queued by exactly one host, and a
station is seen by every host whichever finished its uploads.

Hosts are in-process here (`run_once` and `notices.after_pass` with each host's own config);
the clock of the checks is the test's, as in test_notices.py. The disk test fills a real small
file system (tmpfs, root), which the second host reaches through a mount path of its own.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from dittohead.receiver.admin.init_cmd import init
from dittohead.receiver.config.model import Config, load_config
from dittohead.receiver.processor import notices
from dittohead.receiver.processor.finalize import run_once
from dittohead.receiver.processor.notices import Notice
from tests.support.disks import fill_to, small_disk
from tests.support.hosts import host_config
from tests.support.mail import mail_server
from tests.support.server import STUDY, Server

pytestmark = pytest.mark.usefixtures("fs_mode")

HOUR = 3600.0


def hosts(server: Server) -> tuple[Config, Config]:
    return (
        load_config(host_config(server, "alpha", "1m")),
        load_config(host_config(server, "beta", "1m")),
    )


def queued(config: Config) -> list[Notice]:
    folder = config.state_dir / "notices" / "queue"
    if not folder.is_dir():
        return []
    return sorted((Notice.from_json(p.read_bytes()) for p in folder.glob("*.json")), key=str)


def test_a_station_served_by_one_host_is_not_called_silent_by_the_other(tmp_path: Path) -> None:
    server = mail_server(tmp_path, 25, stations={"silent_after": "1h"})
    alpha, beta = hosts(server)
    state_file = server.config.dropbox / ".notices" / "stations.json"
    # Beta served the station once, long ago (moved two hours back, as test_notices.py does)...
    server.commit({"a.txt": b"a"})
    run_once(beta)
    state = json.loads(state_file.read_text())
    state["brogden-a"]["last"] -= 2 * HOUR
    state_file.write_text(json.dumps(state))
    # ...and now sends through alpha alone.
    server.commit({"b.txt": b"b"})
    run_once(alpha)
    last = json.loads(state_file.read_text())["brogden-a"]["last"]
    assert last > state["brogden-a"]["last"] + HOUR

    def at(hours: float) -> None:
        for host in (beta, alpha):
            notices.after_pass(host, clock=lambda: last + hours * HOUR)

    at(0.5)
    assert queued(alpha) == queued(beta) == []  # beta knows what alpha saw
    at(1.5)
    at(3)
    said = [(n.kind, n.source, n.last_seen) for n in queued(alpha) + queued(beta)]
    assert said == [("silent", "brogden-a", last)]  # once, by one host, for the true silence
    assert len(queued(beta)) == 1  # beta checked first


@pytest.mark.root
def test_a_disk_crossing_is_announced_by_one_host_and_rearmed_below(tmp_path: Path) -> None:
    server = mail_server(tmp_path, 25, disk={"warn_percent": [50, 80]})
    disk = server.destination.parent
    with small_disk(disk):
        # Beta mounts the same file system elsewhere: its path differs, the decision must not.
        elsewhere = tmp_path / "beta-mount"
        elsewhere.mkdir()
        bound = subprocess.run(
            ["mount", "--bind", str(disk), str(elsewhere)], capture_output=True, check=False
        )
        try:
            assert bound.returncode == 0, bound.stderr.decode()
            init(server.config)
            alpha = load_config(host_config(server, "alpha", "1m"))
            beta_path = host_config(server, "beta", "1m")
            doc = beta_path.read_text().replace(str(disk), str(elsewhere))
            beta_path.write_text(doc)
            beta = load_config(beta_path)
            for host in (alpha, beta):
                init(host)  # on every host, as the admin does: its state_dir
            assert beta.study(STUDY).destination.parent == elsewhere

            def both(first: Config, second: Config) -> list[Notice]:
                for host in (first, second, first, second):
                    notices.after_pass(host)
                return queued(alpha) + queued(beta)

            assert both(alpha, beta) == []
            fill = disk / "fill"
            fill_to(fill, 60)
            (first,) = both(alpha, beta)
            assert queued(alpha) == [first] and (first.kind, first.level) == ("disk", 50)
            assert first.studies == (STUDY,) and first.mount == str(disk)
            fill_to(fill, 49)  # within the hysteresis: still announced, for both hosts
            assert len(both(beta, alpha)) == 1
            fill_to(fill, 10)  # clearly below: re-armed, for both hosts
            assert len(both(beta, alpha)) == 1
            fill_to(fill, 55)
            second = [n for n in both(beta, alpha) if n != first]
            assert queued(beta) == second  # this time beta came first, and alone
            assert [(n.level, n.mount) for n in second] == [(50, str(elsewhere))]
            assert second[0].id != first.id
            fill_to(fill, 85)
            assert sorted(n.level for n in both(alpha, beta)) == [50, 50, 80]
        finally:
            subprocess.run(["umount", "-l", str(elsewhere)], check=False)
