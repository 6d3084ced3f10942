"""Several hosts' processors on one dropbox at the same time (docs/design.md, "Several hosts").

Each "host" is its own real ``dittohead-processor --once`` process with its own config file,
``state_dir``, socket and ``cluster.host``, all on one dropbox and study tree in tmp (a local
file system: the GlusterFS tier runs the same scenario across two mounts). Kills are real
SIGKILLs; a frozen host is a real SIGSTOP (the test-only hook ``DITTOHEAD_TEST_CRASH_AT`` with
``:stop``). Mocked: the uploaders' accounts — entries belong to uids 7001-7003 with no
account, and the runner lets those uids upload (creating Unix users is the root tiers' job).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dittohead.receiver.dropbox import claims_dir
from dittohead.receiver.processor.lease import Claims, Holder, LeaseLost
from dittohead.receiver.processor.ledger import Ledger, check_chain
from tests.support.hosts import UPLOADERS, commit_as, finish, host_config, start
from tests.support.invariants import ledger_of, tree_files
from tests.support.ledger import make_record
from tests.support.server import STUDY, Server, make_server

# Every test also with the file-system fallbacks forced (fscaps: link()+unlink(), named temporary
# files, fsync per file), as on a GlusterFS mount; the processes started inherit the variable.
pytestmark = pytest.mark.usefixtures("fs_mode")

ADMIN = Path(sys.executable).parent / "dittohead-admin"


def admin_verify(server: Server) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ADMIN), "verify", "--config", str(server.config_path), "--study", STUDY],
        capture_output=True,
        text=True,
        check=False,
    )


def leftovers(server: Server) -> list[str]:
    """Entries not finished: in the inbox, in processing/, or with a journal or lease."""
    study = server.config.study_dir(STUDY)
    left = [f"inbox/{p.name}" for p in server.inbox.iterdir()]
    left += [
        f"processing/{p.name}" for p in (study / "processing").iterdir() if p.name != ".claims"
    ]
    left += [f"claims/{p.name}" for p in claims_dir(server.config.dropbox, STUDY).iterdir()]
    return sorted(x for x in left if x != "claims/lock")


def order_problems(server: Server, committed: list[tuple[int, str, dict[str, bytes]]]) -> list[str]:
    """Per path: the first version stored keeps the plain name; and one uploader's versions
    of a path take their names in the order that uploader committed them."""
    records = ledger_of(server.destination)
    problems = []
    firsts: dict[str, str] = {}
    for r in records:
        if r["outcome"] == "stored":
            firsts.setdefault(r["path"], r["stored_as"])
    problems += [f"{p}: first stored as {s}" for p, s in firsts.items() if p != s]
    seq = {(r["upload"], r["path"]): r["seq"] for r in records}
    for uid in UPLOADERS:
        mine = [(name, files) for u, name, files in committed if u == uid]
        last: dict[str, int] = {}
        for name, files in mine:
            for path in files:
                at = seq.get((name, path))
                if at is None:
                    problems.append(f"{name} {path}: no record")
                elif at < last.get(path, 0):
                    problems.append(f"{name} {path}: recorded before an earlier entry's")
                else:
                    last[path] = at
    return problems


@pytest.mark.parametrize("seed", [11, 29])
def test_three_hosts_killed_at_random_store_every_version_once(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    server = make_server(tmp_path)
    hosts = [host_config(server, f"host{i}", "1s") for i in range(3)]
    paths = ["a.txt", "d/b.bin", "d/e/c.txt", f"only-{seed}.txt"]
    committed: list[tuple[int, str, dict[str, bytes]]] = []
    sent: dict[str, set[bytes]] = {}

    def commit_some(n: int) -> None:
        for _ in range(n):
            uid = rng.choice(UPLOADERS)
            # Re-sent paths with a few contents each: new versions and duplicates, across
            # uploaders and hosts.
            files = {p: f"{p} v{rng.randrange(4)}".encode() for p in rng.sample(paths, 3)}
            source = rng.choice(["brogden-a", "brogden-b"])
            committed.append((uid, commit_as(server, uid, files, source), files))
            for p, data in files.items():
                sent.setdefault(p, set()).add(data)

    commit_some(12)
    kills = 0
    for _ in range(8):  # bounded: each round starts every host, kills some, waits for all
        # One host kills itself at a named instant (the n-th time it gets there), so that every
        # round kills mid-entry even on a machine fast enough to finish before the timed kills.
        crashing = rng.randrange(len(hosts))
        crash = f"{rng.choice(['claiming', 'claimed', 'copied', 'staged', 'published'])}:"
        crash += str(rng.randint(1, 3))
        procs = [start(h, crash if i == crashing else None) for i, h in enumerate(hosts)]
        time.sleep(rng.uniform(0.05, 0.6))
        for proc in rng.sample(procs, rng.randrange(3)):
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            finish(proc)
            kills += proc.returncode == -signal.SIGKILL
        commit_some(rng.randrange(4))
    # A final clean pass, after the leases of the killed hosts ran out.
    for _ in range(4):
        time.sleep(1.1)
        for proc in [start(h) for h in hosts]:
            finish(proc)
        if not leftovers(server):
            break
    assert leftovers(server) == []
    assert not any((server.config.study_dir(STUDY) / "quarantine").iterdir())
    assert server.problems(sent) == []  # chain, one record each, each content stored once
    assert order_problems(server, committed) == []
    result = admin_verify(server)
    assert result.returncode == 0, result.stdout + result.stderr
    assert kills > 0  # the seeds do kill


def test_a_killed_hosts_entry_is_finished_by_another_after_its_lease(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    alpha, beta = host_config(server, "alpha", "2s"), host_config(server, "beta", "2s")
    files = {"a.txt": b"one", "d/b.txt": b"two"}
    name = commit_as(server, 7001, files, "brogden-a")
    finish(start(alpha, "staged:1"))  # SIGKILLed with the entry staged, not published
    # Its last renewal was before its end (a slow start under load must not shorten the wait).
    killed = time.monotonic()
    study = server.config.study_dir(STUDY)
    # Within alpha's lease, beta leaves the entry alone (alpha may only be slow)...
    assert "taking over" not in finish(start(beta))
    assert (study / "processing" / name).is_dir() and tree_files(server.destination) == {}
    # ...after it, beta finishes it, exactly once.
    time.sleep(max(0.0, 2.2 - (time.monotonic() - killed)))
    assert f"taking over {name} from host alpha" in finish(start(beta))
    assert tree_files(server.destination) == files
    assert (study / "done" / name).is_dir()
    assert server.problems({p: {d} for p, d in files.items()}) == []
    assert leftovers(server) == []


def test_a_restarted_host_finishes_its_own_entry_at_once(tmp_path: Path) -> None:
    """One host, killed and started again: no waiting for its own lease (the dead process is
    seen on this machine), as before several hosts existed."""
    server = make_server(tmp_path)
    alpha = host_config(server, "alpha", "1h")
    files = {"a.txt": b"one"}
    commit_as(server, 7001, files, "brogden-a")
    finish(start(alpha, "published:1"))
    finish(start(alpha))
    assert tree_files(server.destination) == files
    assert leftovers(server) == []
    assert server.problems({p: {d} for p, d in files.items()}) == []


@pytest.mark.parametrize("frozen_at", ["copied:1:stop", "staged:1:stop"])
def test_a_host_that_wakes_after_its_lease_was_taken_writes_nothing(
    tmp_path: Path, frozen_at: str
) -> None:
    """Fencing: alpha freezes (SIGSTOP) holding the entry; beta takes it over after the lease
    and finishes it; alpha wakes up and must neither publish, record, quarantine nor move."""
    server = make_server(tmp_path)
    alpha, beta = host_config(server, "alpha", "1s"), host_config(server, "beta", "1s")
    files = {"a.txt": b"one", "d/b.txt": b"two", "d/c.txt": b"three"}
    name = commit_as(server, 7001, files, "brogden-a")
    frozen = start(alpha, frozen_at)
    deadline = time.monotonic() + 30
    while not _stopped(frozen.pid):
        assert time.monotonic() < deadline and frozen.poll() is None
        time.sleep(0.02)
    time.sleep(1.2)
    assert f"taking over {name} from host alpha" in finish(start(beta))
    assert tree_files(server.destination) == files
    ledger_before = (server.destination / ".dittohead" / "ledger.jsonl").read_bytes()
    os.kill(frozen.pid, signal.SIGCONT)
    err = finish(frozen)
    assert frozen.returncode == 0, err
    assert "taken over by" in err  # by beta, or by "another processor" once beta finished
    assert (server.destination / ".dittohead" / "ledger.jsonl").read_bytes() == ledger_before
    assert tree_files(server.destination) == files
    study = server.config.study_dir(STUDY)
    assert (study / "done" / name).is_dir() and not any((study / "quarantine").iterdir())
    assert server.problems({p: {d} for p, d in files.items()}) == []
    assert leftovers(server) == []


def _stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rfind(b")") + 2 :].split()[0] == b"T"


# -- the lease rules, in-process ------------------------------------------------------------


def test_lease_rules(tmp_path: Path) -> None:
    now = [1000.0]
    mine = Claims(tmp_path, "alpha", 60, clock=lambda: now[0])
    other = Claims(tmp_path, "beta", 60, clock=lambda: now[0])
    with mine.lock.held():
        mine.take("e1", 7001)
        mine.check("e1")
    rec = other.read("e1")
    assert rec is not None and rec.holder == Holder.me("alpha") and rec.uid == 7001
    assert not other.may_take(rec)  # alive elsewhere, lease running
    now[0] += 61
    assert other.may_take(rec)  # expired
    other.take("e1", 7001)
    with pytest.raises(LeaseLost, match="taken over by beta"):
        mine.check("e1")
    # A holder on this machine whose process is gone is taken over at once.
    dead = Holder("beta", Holder.me("beta").boot, 2**22 + 7, 1)
    assert dead.gone(Holder.me("beta")) and not dead.gone(Holder.me("gamma"))
    rebooted = Holder("beta", "another-boot", os.getpid(), 1)
    assert rebooted.gone(Holder.me("beta"))
    other.release("e1")
    assert other.read("e1") is None
    mine.close()
    other.close()


def test_the_ledger_takes_in_what_another_host_appended(tmp_path: Path) -> None:
    """Two ledgers open on one file (two hosts): each appends after catching up, so the chain
    stays one and each sees the other's versions in its duplicate check."""
    dest = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        a, b = Ledger(dest, replay=()), Ledger(dest, replay=())
        a.prepare(["x"])
        b.prepare(["x"])
        sha = hashlib.sha256(b"1").hexdigest()
        a.append(make_record(path="x", stored_as="x", sha256=sha, upload="u1"))
        a.flush()
        b.catch_up()
        assert b.stored_version("x", sha) == "x"
        b.append(make_record(path="x", stored_as="x~2", sha256="f" * 64, upload="u2"))
        a.append(make_record(path="y", sha256="e" * 64, stored_as="y", upload="u3"))
        b.flush()
        a.flush()  # chained again onto b's line
        a.close()
        b.close()
        records = ledger_of(tmp_path)
        assert [r["upload"] for r in records] == ["u1", "u2", "u3"]
        assert check_chain(records) == []
    finally:
        os.close(dest)
