"""A Hypothesis state machine over arrivals, processor passes, crashes and restarts.

Crashes are in-process here: `processor.fault_point` is replaced by one that raises at the
chosen step, the n-th time (a `BaseException`, so no handler in the processor can swallow it).
That is gentler than a real kill (``finally`` blocks still run, so queued ledger records get
written); the SIGKILL version of the same steps is in test_processor_faults.py.

After every rule: no stored file ever changes content or disappears, no content is stored twice
for one path, the ledger's chain is intact and it accounts for every file in the tree. After a
pass that was not interrupted: every distinct content sent for each path is stored.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dittohead.receiver.processor import finalize as processor
from dittohead.receiver.processor.finalize import CRASH_STEPS, run_once
from tests.support.invariants import (
    dropbox_problems,
    sent_problems,
    tree_files,
    tree_problems,
)
from tests.support.server import STUDY, Server, make_server

PATHS = ["a.txt", "d/b.bin", "d/e/c", "f.tar.gz"]
CONTENTS = [b"", b"x", b"y", b"zz", bytes(range(256)) * 8]
LIE = b"a lie"


class SimulatedCrash(BaseException):
    """The processor 'died' at a fault point."""


class ProcessorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.base = Path(tempfile.mkdtemp(prefix="dittohead-machine-"))
        self.server: Server = make_server(self.base)
        self.sent: dict[str, set[bytes]] = {}
        self.seen: dict[str, bytes] = {}  # every stored file ever observed, by stored name
        self.real_fault_point = processor.fault_point

    def teardown(self) -> None:
        processor.fault_point = self.real_fault_point
        shutil.rmtree(self.base, ignore_errors=True)

    @rule(files=st.dictionaries(st.sampled_from(PATHS), st.sampled_from(CONTENTS), min_size=1))
    def arrive(self, files: dict[str, bytes]) -> None:
        self.server.commit(files)
        for path, data in files.items():
            self.sent.setdefault(path, set()).add(data)
        time.sleep(0.002)  # commit order follows ctime, which ticks at the kernel's granularity

    @rule(path=st.sampled_from(PATHS))
    def arrive_lying(self, path: str) -> None:
        """An entry whose manifest gives another sha256: quarantined, never published."""
        manifest = {
            "files": 1,
            "bytes": len(LIE),
            "entries": [{"path": path, "size": len(LIE), "sha256": "0" * 64}],
        }
        self.server.commit({path: LIE}, manifest=manifest)
        time.sleep(0.002)

    @rule()
    def process(self) -> None:
        run_once(self.server.config)
        study_dir = self.server.config.study_dir(STUDY)
        assert sent_problems(self.server.destination, self.sent) == []
        assert (
            dropbox_problems(study_dir, self.server.config.state_dir, self.server.destination) == []
        )
        assert not any(self.server.inbox.iterdir())

    @rule(at=st.sampled_from(CRASH_STEPS), nth=st.integers(1, 4))
    def crash(self, at: str, nth: int) -> None:
        count = 0

        def die(step: str) -> None:
            nonlocal count
            if step == at:
                count += 1
                if count == nth:
                    raise SimulatedCrash(f"{at}:{nth}")

        processor.fault_point = die
        try:
            run_once(self.server.config)
        except SimulatedCrash:
            pass
        finally:
            processor.fault_point = self.real_fault_point

    @invariant()
    def stored_files_never_change(self) -> None:
        files = tree_files(self.server.destination)
        for name, data in self.seen.items():
            assert files.get(name) == data, f"{name} changed or vanished"
        self.seen.update(files)

    @invariant()
    def lies_are_never_published(self) -> None:
        assert LIE not in tree_files(self.server.destination).values()

    @invariant()
    def ledger_accounts_for_the_tree(self) -> None:
        assert tree_problems(self.server.destination) == []


ProcessorMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestProcessorMachine = ProcessorMachine.TestCase
