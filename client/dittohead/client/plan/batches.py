"""Batches: a send cut into uploads of bounded size, each confirmed and remembered on its own.

A collector sends 5-20 GiB over a campus network after a session; a laptop that sleeps at 90%
must not start over. So `split` cuts the files the server has not confirmed (in stream order)
into batches of at most `Limits.max_bytes` file bytes or `Limits.max_files` files (a single
file larger than a batch goes alone), and `send_all` sends them one after the other, each as
its own upload with its own receipt (`deliver.run`). `deliver.run` records a batch's files in
the state file (synced temporary file, rename, synced folder: `state.Staged.commit`) before it
returns, so before the next batch starts. A send killed at any instant and run again therefore
sends only what no receipt confirmed; a batch whose receipt was lost is sent again, and the
processor stores identical content at the same path once (DESIGN "Finalizing"), so every file
is stored exactly once.

The next batch's ``ssh`` is started while the current one ends (`_Ahead`), so that its
connection, login and the receiver's start-up overlap with the current stream instead of
adding to the send's time (docs/performance.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from dittohead.client.plan.job import Job
from dittohead.client.plan.scan import FileItem, Plan
from dittohead.client.progress import Meter, Reading
from dittohead.client.transport import Prompts, SecretPrompt
from dittohead.client.transport.openssh import EarlyStart
from dittohead.core.errors import DittoheadError, UsageError

if TYPE_CHECKING:
    from dittohead.core.receipt import Receipt

DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_FILES = 10_000
#: start the next batch's ssh when the current batch is expected to end within this many
#: seconds (well below `openssh.EARLY_MAX_AGE`, after which a waiting ssh is replaced)
PRESTART_SECONDS = 3.0
#: TEST AND TUNING ONLY: ``<files>`` or ``<files>,<bytes>`` instead of the default limits
#: (docs/collectors/README.md, "Batches"); ``--batch-files``/``--batch-bytes`` win over it
LIMITS_ENV = "DITTOHEAD_BATCH"

EX_INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class Limits:
    """How large one batch may be."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_files: int = DEFAULT_MAX_FILES

    @classmethod
    def from_options(cls, files: int | None, size: int | None, env: str | None) -> Limits:
        base = cls()
        if env:
            try:
                parts = [int(p) for p in env.split(",")]
                if not 1 <= len(parts) <= 2 or min(parts) < 1:
                    raise ValueError
            except ValueError:
                raise UsageError(
                    f"{LIMITS_ENV}={env!r} is not '<files>' or '<files>,<bytes>' "
                    "(positive numbers); unset it"
                ) from None
            base = cls(parts[1] if len(parts) == 2 else base.max_bytes, parts[0])
        return cls(size or base.max_bytes, files or base.max_files)


def split(files: Sequence[FileItem], limits: Limits) -> list[tuple[FileItem, ...]]:
    """Consecutive runs of `files` within `limits`; a file larger than a batch goes alone."""
    batches: list[tuple[FileItem, ...]] = []
    start, size = 0, 0
    for i, item in enumerate(files):
        count = i - start
        if count and (count >= limits.max_files or size + item.size > limits.max_bytes):
            batches.append(tuple(files[start:i]))
            start, size = i, 0
        size += item.size
    if start < len(files):
        batches.append(tuple(files[start:]))
    return batches


class PartlySent(DittoheadError):
    """A send stopped after some of its batches were stored and confirmed."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _partly(receipts: Sequence[Receipt], batches: int, what: str, code: int) -> PartlySent:
    files = sum(r.files for r in receipts)
    return PartlySent(
        f"{what}; {len(receipts)} of {batches} parts ({files} files) were stored and "
        "confirmed before that, and are not sent again: run the same send again for the rest",
        code,
    )


class _Remembered:
    """A secret prompt that asks once per send: each later batch is given the answer once
    more, and only a batch that asks again (the answer was refused) asks the person."""

    def __init__(self, ask: SecretPrompt) -> None:
        self.ask = ask
        self.answers: dict[str, str] = {}
        self.given: set[str] = set()

    def next_batch(self) -> None:
        self.given.clear()

    def __call__(self, prompt: str) -> str | None:
        if prompt in self.answers and prompt not in self.given:
            self.given.add(prompt)
            return self.answers[prompt]
        answer = self.ask(prompt)
        if answer is not None:
            self.answers[prompt] = answer
            self.given.add(prompt)
        return answer


class _Ahead:
    """The progress callback of one batch: shows the send's progress and starts the next
    batch's ``ssh`` when this one is about to end."""

    def __init__(
        self,
        meter: Meter,
        show: Callable[[Reading], None] | None,
        following: EarlyStart | None,
    ) -> None:
        self.meter = meter
        self.show = show
        self.following = following

    def __call__(self, done: int, total: int) -> None:
        reading = self.meter.read(done)
        if self.show is not None:
            self.show(reading)
        nxt = self.following
        if nxt is not None and not nxt.tried:
            left = total - done
            if left <= 0 or (reading.rate and left / reading.rate < PRESTART_SECONDS):
                nxt()


def send_all(
    job: Job,
    *,
    limits: Limits,
    prompts: Prompts | None,
    show: Callable[[Reading], None] | None = None,
    early: EarlyStart | None = None,
) -> list[Receipt]:
    """Send the job's selected files batch by batch; the receipts, in order.

    Raises the failure of a batch as it is when no batch was confirmed yet, else as a
    `PartlySent` that says how much is safe (with the failure's exit code).
    """
    from dittohead.client.deliver import run as deliver

    selected = job.selected
    batches = split(selected.files, limits)
    meter = Meter(selected.total_bytes, len(selected.files), len(batches))
    secrets = (
        [
            _Remembered(ask) if ask is not None else None
            for ask in (prompts.password, prompts.passphrase)
        ]
        if prompts is not None
        else [None, None]
    )
    if prompts is not None:
        prompts = replace(prompts, password=secrets[0], passphrase=secrets[1])
    receipts: list[Receipt] = []
    confirmed = 0
    current = early
    following: EarlyStart | None = None
    try:
        for number, files in enumerate(batches):
            # The empty folders travel with the first batch; every batch brings the folders
            # its own files are in (`pack.members`).
            empty = selected.empty_dirs if number == 0 else ()
            plan = Plan(selected.root, files, selected.dirs, empty)
            following = EarlyStart(job.server, job.request) if number + 1 < len(batches) else None
            for secret in secrets:
                if secret is not None:
                    secret.next_batch()
            receipt = deliver(
                replace(job, selected=plan),
                prompts=prompts,
                progress=_Ahead(meter, show, following),
                early=current,
            )
            if current is not None and current is not early:
                current.close()
            receipts.append(receipt)
            confirmed += sum(f.size for f in files)
            meter.next_batch(confirmed)
            current = following
    except DittoheadError as exc:
        if not receipts:
            raise
        raise _partly(receipts, len(batches), exc.message, exc.exit_code) from exc
    except KeyboardInterrupt:
        if not receipts:
            raise
        raise _partly(receipts, len(batches), "interrupted", EX_INTERRUPTED) from None
    finally:
        for pending in (current, following):
            if pending is not None and pending is not early:
                pending.close()
    return receipts


def limits_from_env() -> str | None:
    return os.environ.get(LIMITS_ENV)
