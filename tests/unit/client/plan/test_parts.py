"""How the parts of a send are sequenced (`batches._Parts`): part n+1 streams while part n waits
for its receipt, each receipt is recorded as it arrives, at most two parts run at once, and a
failure of either stops the send after recording what was confirmed.

The transport here is a FAKE (`FakeSession`): no ssh and no receiver, because the order in
which streams end and receipts arrive must be chosen by the test, which no real server lets a
test do. Everything else is real: the folder, the scan, the pack that the fake reads to its
end, `deliver.run` with its receipt checks (`reply.receipt`), and the state file. The real
sshd tier runs the same sends over OpenSSH and asyncssh (tests/integration/test_parts.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dittohead.client.pack import Pack
from dittohead.client.plan import batches
from dittohead.client.plan.batches import Limits, PartlySent, send_all
from dittohead.client.plan.job import Job, prepare
from dittohead.client.progress import Reading
from dittohead.client.reply import Sent
from dittohead.client.transport import Answer, Progress, Prompts, Server, openssh
from dittohead.core.errors import DittoheadError, TransferError
from dittohead.core.grammar import Request
from dittohead.core.receipt import Receipt

from ..conftest import SOURCE, STUDY, write_tree

#: one file per part (`Limits(max_files=1)`): three parts, in this (the scan's) order
FILES = {"a/1.txt": b"one" * 100, "a/2.txt": b"two" * 200, "b/3.txt": b"three" * 300}
WAIT = 10.0  # seconds a test waits for something that should take milliseconds


def wait_for(what: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@dataclass
class FakeSession:
    """A FAKE transport standing for one ``ssh`` (see the module docstring): it reads the pack
    as a real one would once `may_stream` is set (until then it reports no progress after
    every few milliseconds, as a real one does after every chunk, which is where a stopping
    send stops it), waits for `release`, and answers as `verdict` says (a receipt for exactly
    what it read, or a failure)."""

    fakes: Fakes
    program: str = "fake ssh"
    may_stream: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    streamed: threading.Event = field(default_factory=threading.Event)
    verdict: str = "ok"
    files: list[str] = field(default_factory=list)
    abandoned: bool = False
    ended: bool = False

    def age(self) -> float:
        return 0.0

    def abandon(self) -> None:
        self.abandoned = True
        self._end()

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            with self.fakes.lock:
                self.fakes.live -= 1

    def carry(
        self, pack: Pack, *, progress: Progress | None, streamed: Callable[[], None]
    ) -> Answer:
        self.files = [f.path for f in pack.plan.files]
        try:
            deadline = time.monotonic() + WAIT
            while not self.may_stream.wait(0.005):
                assert time.monotonic() < deadline
                if progress is not None:
                    progress(pack.bytes_done, pack.total_bytes)
            for _ in pack:
                if progress is not None:
                    progress(pack.bytes_done, pack.total_bytes)
        except BaseException:
            self.abandon()  # as `openssh.Session.carry`: stopped without the manifest
            raise
        sent = Sent.of(pack)
        streamed()
        self.streamed.set()
        assert self.release.wait(WAIT)
        self._end()
        if self.verdict == "refuse":
            return Answer(b"", b"dittohead: the study nccam3 is closed; ask its owner\n", 77)
        if self.verdict == "dropped":
            return Answer(b"", b"", None)
        receipt = Receipt(
            upload=f"{SOURCE}-{len(self.fakes.sessions)}-{self.files[0]}",
            study=STUDY,
            source=SOURCE,
            user="alice",
            files=sent.files,
            bytes=sent.bytes + (1 if self.verdict == "bad receipt" else 0),
            manifest_sha256=sent.manifest_sha256,
            received_at="2026-01-01T00:00:00Z",
        )
        return Answer(receipt.to_json().encode() + b"\n", b"", 0)


@dataclass
class Fakes:
    """Every `FakeSession` started, in order (part order: a part's ssh starts during the part
    before it, or when it starts), and how many were running at most at once."""

    sessions: list[FakeSession] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    live: int = 0
    peak: int = 0
    auto: bool = False  # sessions stream and answer "ok" at once

    def start(self, server: Server, request: Request) -> FakeSession:
        session = FakeSession(self)
        if self.auto:
            session.may_stream.set()
            session.release.set()
        with self.lock:
            self.sessions.append(session)
            self.live += 1
            self.peak = max(self.peak, self.live)
        return session

    def session(self, n: int) -> FakeSession:
        wait_for(lambda: len(self.sessions) > n)
        return self.sessions[n]


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    made = Fakes()
    # Both the early start (`EarlyStart`) and `deliver` start ssh through `openssh.start`.
    monkeypatch.setattr(openssh, "start", made.start)
    return made


@pytest.fixture
def job(tmp_path: Path) -> Job:
    folder = write_tree(tmp_path / "data", FILES)
    server = Server("127.0.0.1", 2222, "alice")
    return prepare(server, study=STUDY, source=SOURCE, folder=folder, state=tmp_path / "s.json")


def recorded(job: Job) -> set[str]:
    path = Path(job.state.path)
    return set(json.loads(path.read_text())["files"]) if path.exists() else set()


class Send:
    """`send_all` of `job`, one file per part, in a thread of its own: the test plays the
    server meanwhile. `result` is the receipts or what was raised."""

    def __init__(self, job: Job, prompts: Prompts | None = None) -> None:
        self.readings: list[Reading] = []
        self.result: list[Receipt] | BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(job, prompts), daemon=True)
        self.thread.start()

    def _run(self, job: Job, prompts: Prompts | None) -> None:
        try:
            self.result = send_all(
                job, limits=Limits(max_files=1), prompts=prompts, show=self.readings.append
            )
        except BaseException as exc:
            self.result = exc

    def outcome(self) -> list[Receipt] | BaseException | None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        return self.result


def test_the_next_part_streams_while_one_waits_and_receipts_are_recorded_as_they_arrive(
    fakes: Fakes, job: Job
) -> None:
    send = Send(job)
    first = fakes.session(0)
    first.may_stream.set()
    assert first.streamed.wait(WAIT)
    # The first part waits for its receipt; the second streams meanwhile.
    second = fakes.session(1)
    second.may_stream.set()
    assert second.streamed.wait(WAIT)
    assert not first.release.is_set() and recorded(job) == set()
    # The second receipt arrives first: it is recorded at once, on its own.
    second.release.set()
    wait_for(lambda: recorded(job) == {"a/2.txt"})
    # Bounded: the third part neither starts nor has its ssh started while the first part
    # still waits for its receipt (two connections at most).
    time.sleep(0.2)
    assert len(fakes.sessions) == 2
    first.release.set()
    third = fakes.session(2)
    third.may_stream.set()
    third.release.set()
    receipts = send.outcome()
    assert isinstance(receipts, list)
    assert [r.upload.split("-")[-1] for r in receipts] == list(FILES)  # in part order
    assert recorded(job) == set(FILES)
    assert fakes.peak == 2 and fakes.live == 0
    assert [s.files for s in fakes.sessions] == [[p] for p in FILES]


def test_progress_counts_bytes_when_streamed_and_adds_up(fakes: Fakes, job: Job) -> None:
    send = Send(job)
    for n in range(3):
        session = fakes.session(n)
        session.may_stream.set()
        assert session.streamed.wait(WAIT)
        if n == 1:
            # The second part has streamed while the first has no receipt yet: the reading
            # counts both parts' bytes already.
            assert send.readings[-1].bytes_done == len(FILES["a/1.txt"]) + len(FILES["a/2.txt"])
            assert send.readings[-1].batch == 2
            fakes.sessions[0].release.set()  # the third part starts once the first settled
    for session in fakes.sessions:
        session.release.set()
    assert isinstance(send.outcome(), list)
    done = [r.bytes_done for r in send.readings]
    assert done == sorted(done)  # never backwards
    assert done[-1] == sum(map(len, FILES.values())) == send.readings[-1].bytes_total
    assert [r.batch for r in send.readings] == sorted(r.batch for r in send.readings)
    assert all(r.batches == 3 for r in send.readings)


@pytest.mark.parametrize(
    ("verdict", "words", "code"),
    [
        ("refuse", "the study nccam3 is closed; ask its owner", 77),
        ("bad receipt", "does not match what was sent", TransferError.exit_code),
        ("dropped", "", None),
    ],
)
def test_a_failed_part_stops_the_send_after_recording_the_receipt_that_came(
    fakes: Fakes, job: Job, verdict: str, words: str, code: int | None
) -> None:
    """Part 2 fails while part 1 still waits for its receipt: part 1's receipt is recorded,
    part 3 never starts, and the send ends with part 2's one line."""
    send = Send(job)
    first = fakes.session(0)
    first.may_stream.set()
    second = fakes.session(1)
    second.may_stream.set()
    assert second.streamed.wait(WAIT)
    second.verdict = verdict
    second.release.set()
    time.sleep(0.1)  # the failure is in; the first part's receipt comes after it
    first.release.set()
    error = send.outcome()
    assert isinstance(error, PartlySent)
    assert "1 of 3 parts (1 files) were stored and confirmed" in error.message
    assert words in error.message and "\n" not in error.message
    assert code is None or error.exit_code == code
    assert recorded(job) == {"a/1.txt"}
    assert len(fakes.sessions) == 2 and fakes.live == 0


def test_a_part_refused_while_the_next_streams_stops_that_stream(fakes: Fakes, job: Job) -> None:
    """Part 1 is refused while part 2 is about to stream: part 2 is stopped at its next
    reading, before its manifest (abandoned: its receiver stores nothing), and the refusal is
    the one line."""
    send = Send(job)
    first = fakes.session(0)
    first.may_stream.set()
    assert first.streamed.wait(WAIT)
    second = fakes.session(1)  # started; it stays before its first byte
    first.verdict = "refuse"
    first.release.set()
    error = send.outcome()
    assert isinstance(error, DittoheadError) and not isinstance(error, PartlySent)
    assert error.message.startswith("the study nccam3 is closed") and error.exit_code == 77
    assert second.abandoned and not second.streamed.is_set()
    assert recorded(job) == set() and fakes.live == 0


def test_a_rerun_sends_only_what_no_receipt_confirmed(fakes: Fakes, job: Job) -> None:
    send = Send(job)
    for n, verdict in enumerate(["ok", "dropped"]):
        session = fakes.session(n)
        session.verdict = verdict
        session.may_stream.set()
        session.release.set()
    assert isinstance(send.outcome(), PartlySent)
    assert recorded(job) == {"a/1.txt"}
    again = prepare(
        job.server, study=STUDY, source=SOURCE, folder=job.scanned.root, state=job.state.path
    )
    assert [f.path for f in again.selected.files] == ["a/2.txt", "b/3.txt"]
    fakes.auto = True
    assert isinstance(Send(again).outcome(), list)
    assert recorded(job) == set(FILES)
    # Every file went in exactly one upload whose receipt checked out.
    confirmed = [s.files for s in fakes.sessions if s.verdict == "ok" and s.streamed.is_set()]
    assert sorted(p for files in confirmed for p in files) == sorted(FILES)


def test_questions_are_asked_by_the_calling_thread_once_per_send(
    monkeypatch: pytest.MonkeyPatch, job: Job
) -> None:
    """A part's login asks from its own thread; the question reaches the person through the
    thread that called `send_all` (where Ctrl-C can reach a prompt), and the answer is given
    to the later parts without asking again. `deliver.run` is replaced by a FAKE that only
    asks, records and answers."""
    from dittohead.client import deliver

    asked_in: list[threading.Thread] = []
    caller = threading.current_thread()

    def password(prompt: str) -> str:
        asked_in.append(threading.current_thread())
        return "secret"

    def fake_run(part: Job, *, prompts: Prompts, streamed: Callable[[], None], **kw: Any) -> Any:
        assert threading.current_thread() is not caller
        assert prompts.password is not None and prompts.password("Password: ") == "secret"
        streamed()
        part.state.record(part.selected.files)
        return Receipt(
            upload=part.selected.files[0].path, study=STUDY, source=SOURCE, user="alice",
            files=1, bytes=part.selected.files[0].size, manifest_sha256="0" * 64,
            received_at="2026-01-01T00:00:00Z",
        )  # fmt: skip

    monkeypatch.setattr(deliver, "run", fake_run)
    receipts = send_all(job, limits=Limits(max_files=1), prompts=Prompts(password=password))
    assert [r.upload for r in receipts] == list(FILES)
    assert asked_in == [caller]  # once, and by the caller


def test_ctrl_c_at_a_question_keeps_the_receipt_that_comes_within_the_grace(
    monkeypatch: pytest.MonkeyPatch, job: Job
) -> None:
    """Ctrl-C at part 2's password prompt (raised in the calling thread, as SIGINT is) while
    part 1 still waits for its receipt: part 1's receipt, coming 0.2 s later, is still
    recorded, and the send ends as interrupted. `deliver.run` is a FAKE, as above."""
    from dittohead.client import deliver

    def password(prompt: str) -> str:
        raise KeyboardInterrupt

    def fake_run(part: Job, *, prompts: Prompts, streamed: Callable[[], None], **kw: Any) -> Any:
        path = part.selected.files[0].path
        streamed()
        if path != "a/1.txt":
            assert prompts.password is not None
            prompts.password("Password: ")  # raises KeyboardInterrupt here too
        time.sleep(0.2)
        part.state.record(part.selected.files)
        return Receipt(
            upload=path, study=STUDY, source=SOURCE, user="alice", files=1,
            bytes=part.selected.files[0].size, manifest_sha256="0" * 64,
            received_at="2026-01-01T00:00:00Z",
        )  # fmt: skip

    monkeypatch.setattr(deliver, "run", fake_run)
    with pytest.raises(PartlySent, match="interrupted; 1 of 3 parts") as caught:
        send_all(job, limits=Limits(max_files=1), prompts=Prompts(password=password))
    assert caught.value.exit_code == batches.EX_INTERRUPTED
    assert recorded(job) == {"a/1.txt"}
