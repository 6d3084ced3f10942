"""Kill the processor at every journaled step (and at random instants), restart it, and check
that nothing was lost and nothing stored twice.

The processor runs as a real subprocess so that a kill is a real SIGKILL: no ``finally`` block,
no ledger flush, file descriptors and the lock dropped by the kernel. It is stopped either by
the test-only hook ``DITTOHEAD_TEST_CRASH_AT=<step>:<n>`` (processor.CRASH_STEPS) or by the test
sending SIGKILL after a random delay.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dittohead.receiver.dropbox import claims_dir
from dittohead.receiver.fscaps import FORCE_ENV
from dittohead.receiver.processor.finalize import CRASH_STEPS
from tests.support.invariants import (
    ledger_of,
    tree_files,
)
from tests.support.server import STUDY, Server, make_server

REPO = Path(__file__).resolve().parents[4]
PROCESS = (
    "import sys\n"
    "from dittohead.receiver.processor import finalize as processor\n"
    "from dittohead.receiver.config.model import load_config\n"
    "if len(sys.argv) > 2:\n"
    "    processor._LEDGER_BATCH = int(sys.argv[2])\n"
    "processor.run_once(load_config(sys.argv[1]))\n"
)


def processor(
    server: Server, crash: str | None = None, batch: int | None = None
) -> subprocess.Popen[bytes]:
    """The processor as a subprocess; `batch` sets how many bytes of queued ledger lines make
    it sync and write them in the middle of an entry (1: after every file)."""
    env = {k: v for k, v in os.environ.items() if k != "DITTOHEAD_TEST_CRASH_AT"}
    if crash:
        env["DITTOHEAD_TEST_CRASH_AT"] = crash
    return subprocess.Popen(
        [sys.executable, "-c", PROCESS, str(server.config_path)]
        + ([] if batch is None else [str(batch)]),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def run_processor(server: Server, crash: str | None = None, batch: int | None = None) -> int:
    proc = processor(server, crash, batch)
    _, err = proc.communicate(timeout=30)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(err.decode())
    return proc.returncode


def all_problems(server: Server, sent: dict[str, set[bytes]]) -> list[str]:
    return server.problems(sent) + [f"inbox still holds {p.name}" for p in server.inbox.iterdir()]


# Three honest entries of one uploader whose paths overlap (new versions and duplicates), and
# one whose manifest lies (quarantined). In this order the pass reaches: claiming x4,
# claimed x4, copied x7, staged x3, moved x2 (``d`` whole into the empty tree; later ``d/e``
# whole into the ``d`` already there), published x5, flushed x3, done x3, cleaned x3,
# quarantined x1.
ENTRIES: list[dict[str, bytes]] = [
    {"a.txt": b"a version 1", "b.bin": b"\x00" * 5000, "d/c.txt": b"c"},
    {"a.txt": b"a version 2", "b.bin": b"\x00" * 5000},
    {"a.txt": b"a version 1", "d/e/f.txt": b"deep"},
]
EXPECTED = {
    "a.txt": b"a version 1",
    "a~2.txt": b"a version 2",
    "b.bin": b"\x00" * 5000,
    "d/c.txt": b"c",
    "d/e/f.txt": b"deep",
}


def commit_all(server: Server) -> tuple[dict[str, set[bytes]], str]:
    sent: dict[str, set[bytes]] = {}
    names = []
    for files in ENTRIES[:2]:
        names.append(server.commit(files))
        time.sleep(0.02)  # distinct commit times (ctime ticks at the kernel's granularity)
    liar = {"x.txt": b"the truth"}
    manifest = {
        "files": 1,
        "bytes": 9,
        "entries": [{"path": "x.txt", "size": 9, "sha256": "0" * 64}],
    }
    bad = server.commit(liar, manifest=manifest)
    time.sleep(0.02)
    names.append(server.commit(ENTRIES[2]))
    for files in ENTRIES:
        for path, data in files.items():
            sent.setdefault(path, set()).add(data)
    return sent, bad


STEP_CASES = [
    "claiming:1", "claiming:3", "claimed:1", "claimed:4",
    "copied:1", "copied:2", "copied:4", "copied:7",
    "staged:1", "staged:3", "moved:1", "moved:2",
    "published:1", "published:2", "published:3", "published:5",
    "flushed:1", "flushed:3", "done:1", "done:3", "cleaned:2", "quarantined:1",
]  # fmt: skip


def test_every_step_has_a_case() -> None:
    assert {case.split(":")[0] for case in STEP_CASES} == set(CRASH_STEPS)


@pytest.mark.parametrize("crash", STEP_CASES)
def test_a_kill_at_each_step_is_finished_by_the_next_run(tmp_path: Path, crash: str) -> None:
    server = make_server(tmp_path)
    sent, bad = commit_all(server)
    assert run_processor(server, crash) == -signal.SIGKILL, "the hook did not fire"
    assert run_processor(server) == 0
    assert tree_files(server.destination) == EXPECTED
    assert all_problems(server, sent) == []
    done = server.config.study_dir(STUDY) / "done"
    quarantine = server.config.study_dir(STUDY) / "quarantine"
    assert len(list(done.iterdir())) == 3
    assert sorted(p.name for p in quarantine.iterdir()) == [bad, f"{bad}.reason"]
    assert "sha256" in (quarantine / f"{bad}.reason").read_text()


def test_two_kills_in_a_row_then_a_clean_run(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    sent, _ = commit_all(server)
    assert run_processor(server, "published:2") == -signal.SIGKILL
    assert run_processor(server, "copied:2") == -signal.SIGKILL
    assert run_processor(server, "flushed:1") == -signal.SIGKILL
    assert run_processor(server) == 0
    assert tree_files(server.destination) == EXPECTED
    assert all_problems(server, sent) == []


@pytest.mark.parametrize("crash", ["published:1", "published:2", "published:4", "flushed:2"])
def test_a_kill_between_ledger_batches_is_finished_by_the_next_run(
    tmp_path: Path, crash: str
) -> None:
    """Big entries sync and write their ledger lines every few thousand files; here after every
    file, so a kill lands with part of an entry recorded and the rest published or not."""
    server = make_server(tmp_path)
    sent, _ = commit_all(server)
    assert run_processor(server, crash, batch=1) == -signal.SIGKILL, "the hook did not fire"
    step, nth = crash.split(":")
    if step == "published":  # every file before the n-th stored one is already recorded
        assert len(ledger_of(server.destination)) == int(nth) - 1
    assert run_processor(server, batch=1) == 0
    assert tree_files(server.destination) == EXPECTED
    assert all_problems(server, sent) == []


def test_the_hook_does_nothing_when_unset(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    sent, _ = commit_all(server)
    assert run_processor(server) == 0
    assert tree_files(server.destination) == EXPECTED
    assert all_problems(server, sent) == []


def test_temporary_files_a_killed_run_left_are_removed_by_the_next(tmp_path: Path) -> None:
    """A kill between writing a journal file (or a ledger summary) and renaming it into place
    leaves its temporary file; the next run removes it (the journal itself is whole)."""
    server = make_server(tmp_path)
    sent, _ = commit_all(server)
    journal = claims_dir(server.config.dropbox, STUDY)
    ledgers = server.config.state_dir / "ledgers"
    left = {journal: ".entry.json.4242.tmp", ledgers: f".{STUDY}.summary.4242.tmp"}
    for folder, name in left.items():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b'{"half')
    assert run_processor(server) == 0
    assert tree_files(server.destination) == EXPECTED
    assert all_problems(server, sent) == []  # the journal is empty
    assert not [p.name for p in ledgers.iterdir() if p.name.endswith(".tmp")]


def test_kills_at_random_instants(tmp_path: Path) -> None:
    """SIGKILL from outside after a random delay, whatever the processor is doing then.

    Each round commits one more entry (a new version of one path, fresh data for the rest)
    before starting the processor, so work piles up and most kills land mid-pass.
    """
    rng = random.Random(20261124)
    server = make_server(tmp_path)
    # How long the interpreter takes to start and find nothing to do: kills aim just past it.
    began = time.monotonic()
    assert run_processor(server) == 0
    startup = time.monotonic() - began
    sent: dict[str, set[bytes]] = {}
    kills = 0
    for round_ in range(6):
        files = {
            f"run{i % 4}/block{i}.bin": rng.randbytes(rng.randrange(100_000, 500_000))
            for i in range(32)
        }
        files["run0/block0.bin"] = b"round %d" % (round_ % 3)  # new versions and duplicates
        server.commit(files)
        for path, data in files.items():
            sent.setdefault(path, set()).add(data)
        proc = processor(server)
        # (never negative: the processor may start in less than the 50 ms aimed below it)
        time.sleep(max(0.0, startup + rng.uniform(-0.05, 0.15)))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        kills += proc.returncode == -signal.SIGKILL
    assert run_processor(server) == 0
    assert kills >= 3, "the processor was too quick to be killed: make the entries bigger"
    assert all_problems(server, sent) == []
    assert len(list((server.config.study_dir(STUDY) / "done").iterdir())) == 6


@pytest.mark.parametrize("crash", [c for c in STEP_CASES if not c.startswith("moved:")])
def test_a_kill_at_each_step_with_the_fallbacks_forced(
    tmp_path: Path, crash: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, every file-system fallback forced (the processes inherit the variable): no
    folder is moved whole then, so the "moved" steps do not exist."""
    monkeypatch.setenv(FORCE_ENV, "1")
    test_a_kill_at_each_step_is_finished_by_the_next_run(tmp_path, crash)
