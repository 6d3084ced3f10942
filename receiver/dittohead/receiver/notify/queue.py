"""What ``dittohead-notify`` reads and writes in ``<state_dir>/notices/``.

The processor writes ``queue/<id>.json`` (see `dittohead.receiver.processor.notices`). This side
keeps its own files in ``notify/``, where the processor never looks:

- ``delivered.log`` — one line ``<id> <address>`` for each notice a recipient has: appended and
  fsynced only *after* the relay accepted the mail, so a crash in between means that recipient
  gets that notice once more on the next run (at most one duplicate), never that it is lost.
  A torn last line (a crash mid-append) is ignored, which again errs towards a duplicate. When
  notices are finished the log is rewritten (atomically) with only the lines still needed.
- ``last_mail.json`` — when each address was last mailed, for digests (see `cli`).
- ``notify.lock`` — one delivery run at a time (the path unit and the timer may overlap).

A notice every recipient has is moved to ``sent/`` with one rename: the processor's duplicate
check looks in ``queue/`` and then ``sent/``, so it always finds it. ``sent/`` keeps notices
`KEEP_SENT` seconds, far longer than any replay of the processor could come back to an event.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from dittohead.receiver import fsops
from dittohead.receiver.processor.notices import QUEUE, SENT, Notice, notices_dir

log = logging.getLogger(__name__)

#: how long a delivered notice stays in sent/ (30 days)
KEEP_SENT = 30 * 86400.0
NOTIFY = "notify"
DELIVERED = "delivered.log"
LAST_MAIL = "last_mail.json"


class Queue:
    def __init__(self, state_dir: Path) -> None:
        self.dir = notices_dir(state_dir)
        self.queue = self.dir / QUEUE
        self.sent = self.dir / SENT
        self.own = self.dir / NOTIFY
        for folder in (self.dir, self.queue, self.sent, self.own):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fsops.remove_leftover_temps(self.own)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(self.own / "notify.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def pending(self) -> list[Notice]:
        """The queued notices, oldest first. One that cannot be read is logged and left."""
        found = []
        for path in self.queue.glob("*.json"):
            if path.name.startswith("."):
                continue  # the processor's temporary file, not a notice yet
            try:
                found.append(Notice.from_json(path.read_bytes()))
            except FileNotFoundError:
                continue  # finished by a run that overlapped
            except (ValueError, TypeError) as exc:
                log.error("%s cannot be read (%s); it is left in the queue", path, exc)
        found.sort(key=lambda n: (n.created, n.id))
        return found

    # -- who has what --------------------------------------------------------------------------

    def delivered(self) -> set[tuple[str, str]]:
        try:
            data = (self.own / DELIVERED).read_bytes()
        except FileNotFoundError:
            return set()
        done = set()
        lines = data.split(b"\n")
        for raw in lines[:-1]:  # the last piece is empty or a torn line
            notice_id, _, address = raw.decode("utf-8", "replace").partition(" ")
            if address:
                done.add((notice_id, address))
        return done

    def mark(self, notice_ids: Iterable[str], address: str) -> None:
        """Record that `address` has these notices (after the relay accepted the mail)."""
        text = "".join(f"{notice_id} {address}\n" for notice_id in notice_ids)
        fd = os.open(
            self.own / DELIVERED,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        try:
            fsops.write_all(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def finish(self, notice_id: str) -> None:
        """Every recipient has `notice_id`: move it to sent/."""
        name = f"{notice_id}.json"
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.queue / name, self.sent / name)
        fsops.fsync_folder(self.sent)
        fsops.fsync_folder(self.queue)

    def compact(self, live: set[str]) -> None:
        """Keep only the delivered lines of notices still queued."""
        done = self.delivered()
        keep = sorted((i, a) for i, a in done if i in live)
        if len(keep) == len(done):
            return
        text = "".join(f"{i} {a}\n" for i, a in keep)
        fsops.replace_file(self.own / DELIVERED, [text.encode()])
        fsops.fsync_folder(self.own)

    def prune(self, now: float) -> None:
        for path in self.sent.glob("*.json"):
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime > KEEP_SENT:
                    path.unlink()

    # -- digests -------------------------------------------------------------------------------

    def last_mail(self) -> dict[str, float]:
        try:
            doc = json.loads((self.own / LAST_MAIL).read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        return {str(k): float(v) for k, v in doc.items()} if isinstance(doc, dict) else {}

    def save_last_mail(self, doc: dict[str, float], now: float, keep: float) -> None:
        doc = {k: v for k, v in doc.items() if now - v < keep}
        fsops.replace_file(self.own / LAST_MAIL, [json.dumps(doc, sort_keys=True).encode()])
        fsops.fsync_folder(self.own)
