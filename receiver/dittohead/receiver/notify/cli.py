"""``dittohead-notify --config CFG [--once]``: deliver the queued notices by mail.

One round: read the queue, work out who gets what (`compose.recipients`), send each person one
mail (a digest when there are several notices for them), record each acceptance, and move the
notices everybody has to ``sent/``. Digests: after a mail to someone, what else comes for them
waits until ``mail.digest_interval`` has passed and then goes as one mail, so a burst of 500
uploads in an hour is a handful of mails per person, not 500.

``--once`` runs one round. Without it (how the unit runs it) rounds go on while notices wait
for a digest interval to pass (sleeping until the earliest is due) and while new ones arrive,
and the program exits when nothing is left to send; the path unit starts it again when the
processor queues more, the timer when the relay was down. Exit 75 when the relay could not be
reached: the notices stay queued.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from dittohead.receiver.config.model import Config, Mail
from dittohead.receiver.notify import compose
from dittohead.receiver.notify.queue import Queue
from dittohead.receiver.notify.relay import Outcome, Relay, read_password
from dittohead.receiver.processor.notices import Notice, notices_dir
from dittohead.receiver.service_cli import run_service

log = logging.getLogger(__name__)


def _fault_point() -> None:
    # TEST ONLY, as finalize.fault_point: DITTOHEAD_TEST_NOTIFY_CRASH=accepted kills the
    # program right after the relay accepted a mail and before it is recorded, so that a test
    # proves the next run sends it at most once more and loses nothing.
    if os.environ.get("DITTOHEAD_TEST_NOTIFY_CRASH") == "accepted":
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class Round:
    """What one round did."""

    sent: int  # mails the relay accepted
    refused: int  # recipients the relay refused for good
    deferred: int  # recipients the relay asked to try later
    held: float | None  # when the earliest held-back digest is due (None: nothing held)
    left: int  # notices still queued


RelayFactory = Callable[[Mail], Relay]


def _relay(mail: Mail) -> Relay:
    return Relay(mail, read_password(mail))


def deliver(config: Config, queue: Queue, now: float, relay: RelayFactory = _relay) -> Round:
    """One delivery round at time `now` (the caller's clock, so tests can move it)."""
    mail = config.mail
    assert mail is not None
    pending = queue.pending()
    done = queue.delivered()
    wanted: dict[str, list[str]] = {}
    todo: dict[str, list[Notice]] = {}
    for notice in pending:
        wanted[notice.id] = who = compose.recipients(config, notice)
        for address in who:
            if (notice.id, address) not in done:
                todo.setdefault(address, []).append(notice)
    last = queue.last_mail()
    sent = refused = deferred = 0
    held: float | None = None
    ready: dict[str, list[Notice]] = {}
    for address, notices in todo.items():
        due = last.get(address, 0.0) + mail.digest_interval
        if due > now:
            held = due if held is None else min(held, due)
            continue
        ready[address] = notices
    if ready:
        with relay(mail) as session:
            for address, notices in ready.items():
                outcome = session.send(address, compose.message(config, mail, address, notices))
                if outcome is Outcome.ACCEPTED:
                    _fault_point()
                    queue.mark((n.id for n in notices), address)
                    last[address] = now
                    sent += 1
                elif outcome is Outcome.REFUSED:
                    # Given up for this address only; the others still get theirs.
                    queue.mark((n.id for n in notices), address)
                    refused += 1
                else:
                    deferred += 1
                if outcome is not Outcome.LATER:
                    done |= {(n.id, address) for n in notices}
        queue.save_last_mail(last, now, keep=max(mail.digest_interval, 1.0) * 2)
    left = 0
    live = set()
    for notice in pending:
        if all((notice.id, address) in done for address in wanted[notice.id]):
            if not wanted[notice.id]:
                log.info("notice %s has nobody to go to; set aside", notice.id)
            queue.finish(notice.id)
        else:
            live.add(notice.id)
            left += 1
    queue.compact(live)
    queue.prune(now)
    return Round(sent, refused, deferred, held, left)


class _Stop:
    def __init__(self) -> None:
        self.event = threading.Event()
        signal.signal(signal.SIGTERM, self._set)

    def _set(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()


def run(config: Config, once: bool, clock: Callable[[], float] = time.time) -> int:
    if config.mail is None:
        log.info("no mail: section in the configuration; nothing to deliver")
        return 0
    if not notices_dir(config.state_dir).is_dir():
        log.info("the processor has queued no notice yet; nothing to deliver")
        return 0
    queue = Queue(config.state_dir)
    stop = _Stop()
    with queue.locked():
        while True:
            result = deliver(config, queue, clock())
            log.info(
                "%d mails sent, %d recipients refused, %d deferred, %d notices left",
                result.sent,
                result.refused,
                result.deferred,
                result.left,
            )
            if once or stop.event.is_set():
                return 0
            if result.held is None:
                # Nothing waits for a digest; look once more for what arrived meanwhile.
                if not _has_new(queue, result.left):
                    return 0
                continue
            # Wake at the earliest digest, or sooner to pick up new notices for others.
            if stop.event.wait(min(max(result.held - clock(), 1.0), 60.0)):
                return 0


def _has_new(queue: Queue, left: int) -> bool:
    return len(queue.pending()) > left


def main(argv: list[str] | None = None) -> int:
    return run_service(
        argv,
        prog="dittohead-notify",
        description="Deliver the notices the processor queued, by mail through the relay.",
        once_help="one delivery round, then exit",
        work=run,
    )


if __name__ == "__main__":
    sys.exit(main())
