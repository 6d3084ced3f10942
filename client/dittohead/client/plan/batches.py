"""Batches: a send cut into uploads of bounded size, each confirmed and remembered on its own.

A collector sends 5-20 GiB over a campus network after a session; a laptop that sleeps at 90%
must not start over. So `split` cuts the files the server has not confirmed (in stream order)
into batches ("parts" in what the collector reads) of at most `Limits.max_bytes` file bytes or
`Limits.max_files` files (a single file larger than a batch goes alone), and `send_all` sends
them, each as its own upload with its own receipt (`deliver.run`). `deliver.run` records a
part's files in the state file (synced temporary file, rename, synced folder:
`state.Staged.commit`) as soon as its receipt has checked out. A send killed at any instant and
run again therefore sends only what no receipt confirmed; a part whose receipt was lost is sent
again, and the processor stores identical content at the same path once (DESIGN "Finalizing"),
so every file is stored exactly once.

How the parts are then sent one after the other, part n+1 streaming while part n commits,
is `parts` (the one place that sequences them; its docstring says why that is safe).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dittohead.client.plan.job import Job
from dittohead.client.plan.parts import EX_INTERRUPTED, PartlySent, Parts
from dittohead.client.plan.scan import FileItem
from dittohead.client.progress import Reading
from dittohead.client.transport import Prompts
from dittohead.client.transport.openssh import EarlyStart
from dittohead.core.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from dittohead.core.receipt import Receipt

__all__ = ["EX_INTERRUPTED", "Limits", "PartlySent", "limits_from_env", "send_all", "split"]

DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_FILES = 10_000
#: TEST AND TUNING ONLY: ``<files>`` or ``<files>,<bytes>`` instead of the default limits
#: (docs/collectors/sending.md, "Progress, and sending in parts"); ``--batch-files`` and
#: ``--batch-bytes`` win over it
LIMITS_ENV = "DITTOHEAD_BATCH"


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


def send_all(
    job: Job,
    *,
    limits: Limits,
    prompts: Prompts | None,
    show: Callable[[Reading], None] | None = None,
    early: EarlyStart | None = None,
) -> list[Receipt]:
    """Send the job's selected files part by part (`parts.Parts`); the receipts, in part order.

    Raises the first failure as it is when no part was confirmed, else as a `PartlySent` that
    says how much is safe (with the failure's exit code); Ctrl-C as KeyboardInterrupt or a
    `PartlySent` with exit code 130.
    """
    batches = split(job.selected.files, limits)
    return Parts(job, batches, prompts=prompts, show=show, early=early).run()


def limits_from_env() -> str | None:
    return os.environ.get(LIMITS_ENV)
