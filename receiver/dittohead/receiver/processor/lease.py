"""Claims shared between hosts: the study lock, a lease on each claimed entry, and fencing.

Several hosts may run a processor on one dropbox (docs/design.md, "Several hosts"). What they
share lives beside the claimed entries, in ``<dropbox>/<study>/processing/.claims/`` (dittohead
0700: no collector can touch it):

- ``lock`` — an fcntl (POSIX record) lock, the one thing that orders the hosts. Claiming,
  taking over, every journal write, quarantining and the whole of publishing an entry (tree,
  ledger, ``done/``) happen while it is held. fcntl locks are what NFSv4 and GlusterFS carry
  between clients (flock is emulated or local on some); the kernel drops one when its
  process dies, and the file server when its client does.
- ``<entry>.json`` — the entry's journal (processor/journal.py): on shared storage, so that
  any host can finish an entry whose host died.
- ``<entry>.lease`` — who works on the entry: host, boot id, pid and start time, a random
  token, and an expiry. The holder renews it (`Heartbeat`) while it verifies and copies.

**Takeover.** An entry whose lease has expired may be taken by any host: under the lock it
writes a lease of its own (a new token) and carries on from the journal, as a restart after a
crash does. A lease of this very machine (same host name and boot id) whose process is gone is
taken at once, without waiting: a restarted processor finishes its own entries immediately, as
it always has on one host.

**Fencing.** A host that stopped (a long pause, a frozen VM, a network partition) may wake up
after its lease was taken. Before every step that changes shared state it takes the lock and
checks that the lease file still carries its token (`Claims.check`); if not, it drops the
entry (`LeaseLost`) without writing anything. Because takeovers happen under the same lock,
there is never a moment in which two hosts may both change one entry's state.

**Clocks.** Expiry is the holder's wall clock plus the lease, compared with the taker's wall
clock: the hosts' clocks must agree to well within the lease (NTP; a cluster file system
needs that anyway). Safety does not depend on it: a clock that runs ahead only makes a
takeover come early, which fencing makes harmless (the old holder's work is wasted, nothing
is stored twice); a clock that runs behind makes it come late.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from dittohead.receiver import fsops

log = logging.getLogger(__name__)

LOCK_NAME = "lock"
LEASE_SUFFIX = ".lease"


class LeaseLost(Exception):
    """Another host took this entry over (our lease had expired), or finished it."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _started(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks since boot), or None when there is none:
    with the pid it names one process for the life of a boot (pids are reused, this is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[19])  # field 22, starttime


@dataclass(frozen=True, slots=True)
class Holder:
    """A processor process, as other hosts see it."""

    host: str
    boot: str
    pid: int
    started: int

    @classmethod
    def me(cls, host: str) -> Holder:
        return cls(host, _boot_id(), os.getpid(), _started(os.getpid()) or 0)

    def gone(self, me: Holder) -> bool:
        """True when this holder is known to be dead, judged from `me`: the same host
        rebooted since, or the same boot and its process is not running. Another host's
        processes cannot be seen from here: for those only the lease's expiry counts."""
        if self.host != me.host:
            return False
        if self.boot != me.boot:
            return True
        if self.pid == me.pid and self.started == me.started:
            # This very process, from an earlier pass that left the entry (an error, a stop
            # request): passes run one at a time, so nobody works on it now.
            return True
        return _started(self.pid) != self.started


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    entry: str
    uid: int
    token: str
    holder: Holder
    expires: float  # the holder's wall clock, seconds since the epoch
    #: files of the entry may be in the tree without their ledger records (see `Claims.publishing`)
    publishing: bool = False

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LeaseRecord:
        doc = json.loads(data)
        return cls(
            entry=str(doc["entry"]),
            uid=int(doc["uid"]),
            token=str(doc["token"]),
            holder=Holder(**doc["holder"]),
            expires=float(doc["expires"]),
            publishing=bool(doc.get("publishing", False)),
        )


class StudyLock:
    """The study's fcntl lock, re-entrant within this process.

    POSIX record locks belong to the process, not to a thread or an fd: a second ``lockf`` from
    another thread of this process would "succeed" at once, and closing any fd of the file
    would drop the lock. So the file is opened once and nothing else opens it, and a thread
    mutex orders this process's own users (the pass and its `Heartbeat`).
    """

    def __init__(self, claims: Path) -> None:
        self._fd = os.open(
            claims / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        self._mutex = threading.RLock()
        self._depth = 0

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._mutex:
            if self._depth == 0:
                fcntl.lockf(self._fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


class Claims:
    """One study's shared claims folder, as one pass of one processor uses it."""

    def __init__(
        self, folder: Path, host: str, lease: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.dir = folder
        self.lease = lease
        self.clock = clock
        self.me = Holder.me(host)
        self.lock = StudyLock(folder)
        #: entry -> the token of our lease on it
        self._mine: dict[str, str] = {}

    def _path(self, entry: str) -> Path:
        return self.dir / f"{entry}{LEASE_SUFFIX}"

    def read(self, entry: str) -> LeaseRecord | None:
        try:
            return LeaseRecord.from_json(self._path(entry).read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            # Only dittohead writes here, whole files by rename: this is damage. Treated as
            # no lease (the entry is taken over); the journal says what was done.
            log.warning("%s: unreadable lease (%s); taken over", entry, exc)
            return None

    def leases(self) -> list[LeaseRecord]:
        out = []
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(LEASE_SUFFIX) and not name.startswith("."):
                rec = self.read(name.removesuffix(LEASE_SUFFIX))
                if rec is not None:
                    out.append(rec)
        return out

    def may_take(self, rec: LeaseRecord | None) -> bool:
        """Whether an entry with lease `rec` may be taken over now (caller holds the lock)."""
        return (
            rec is None
            or rec.token == self._mine.get(rec.entry)
            or rec.holder.gone(self.me)
            or self.clock() > rec.expires
        )

    def take(self, entry: str, uid: int, *, publishing: bool = False) -> None:
        """Make the entry ours: a lease with a new token (caller holds the lock and has asked
        `may_take`). A previous holder that wakes up finds the token changed (`check`)."""
        token = secrets.token_hex(16)
        self._write(LeaseRecord(entry, uid, token, self.me, self.clock() + self.lease, publishing))
        self._mine[entry] = token

    def mark_publishing(self, entry: str) -> None:
        """Say that `entry`'s files start going into the tree (caller holds the lock and the
        lease). Kept through renewals and takeovers until the entry is finished."""
        rec = self.read(entry)
        if rec is not None and not rec.publishing:
            self._write(
                LeaseRecord(entry, rec.uid, rec.token, rec.holder, rec.expires, publishing=True)
            )

    def publishing(self) -> list[LeaseRecord]:
        """Entries left part-published (their holder died or failed while publishing; caller
        holds the lock, so none is being published now). Their files in the tree may have no
        ledger record yet, so no other entry may be published before they are finished: its
        duplicate check would not see them."""
        return [rec for rec in self.leases() if rec.publishing]

    def _write(self, rec: LeaseRecord) -> None:
        fsops.replace_file(self._path(rec.entry), (rec.to_json(),), sync_folder=True)

    def check(self, entry: str) -> None:
        """Raise `LeaseLost` unless our lease on `entry` is still the one on disk (caller holds
        the lock: until it lets go, nobody can take the entry)."""
        token = self._mine.get(entry)
        rec = self.read(entry)
        if token is None or rec is None or rec.token != token:
            self._mine.pop(entry, None)
            who = f"{rec.holder.host} (pid {rec.holder.pid})" if rec else "another processor"
            raise LeaseLost(f"{entry}: taken over by {who} after this processor's lease expired")

    def renew(self, entry: str) -> None:
        """Push our lease's expiry on (takes the lock)."""
        with self.lock.held():
            if entry not in self._mine:
                return  # finished (released) since the heartbeat looked
            self.check(entry)
            rec = self.read(entry)
            assert rec is not None  # check() found it
            self._write(
                LeaseRecord(
                    entry, rec.uid, rec.token, rec.holder, self.clock() + self.lease, rec.publishing
                )
            )

    def release(self, entry: str) -> None:
        """The entry is finished (its journal is gone): drop the lease (caller holds the lock)."""
        self._mine.pop(entry, None)
        with contextlib.suppress(FileNotFoundError):
            self._path(entry).unlink()

    def sweep(self, journaled: set[str]) -> None:
        """Under the lock: remove temporary files (every write here happens under the lock, so
        one present now belongs to a process that died) and leases without a journal (a kill
        between removing an entry's journal and its lease)."""
        fsops.remove_leftover_temps(self.dir)
        for rec in self.leases():
            if rec.entry not in journaled:
                self.release(rec.entry)

    def close(self) -> None:
        self.lock.close()


class Heartbeat:
    """Renews the lease of the entry being verified and copied, every quarter of the lease.

    A thread, so that one large file (hours of copying) cannot outlast the lease; it stops
    renewing as soon as the lease turns out lost (the pass finds out at its next `check`).
    A process that is frozen renews nothing, which is what lets another host take over.
    """

    def __init__(self, claims: Claims) -> None:
        self._claims = claims
        self._entry: str | None = None
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def renewing(self, entry: str) -> Iterator[None]:
        self._entry = entry
        try:
            yield
        finally:
            self._entry = None

    def _run(self) -> None:
        interval = self._claims.lease / 4
        while not self._wake.wait(interval):
            entry = self._entry
            if entry is None:
                continue
            try:
                self._claims.renew(entry)
            except LeaseLost as exc:
                if self._entry == entry:  # not merely finished in the meantime
                    log.warning("%s", exc)
                    self._entry = None
            except OSError as exc:
                if exc.errno != errno.EBADF:  # closed under us at the end of the pass
                    log.warning("%s: the lease could not be renewed (%s)", entry, exc)

    def stop(self) -> None:
        self._wake.set()
        self._thread.join()
