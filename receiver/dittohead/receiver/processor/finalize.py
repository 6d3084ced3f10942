"""The processor: finalize committed uploads into each study's destination tree.

``claim → verify → publish → ledger → done``, one entry at a time, under a lock so only one
processor works at once on a host. Several hosts may work on one dropbox at the same time: each
entry is claimed by one of them, under the study's shared lock, with a lease another host takes
over when it expires; every step that changes shared state is fenced (processor/lease.py).
Each uploader's entries are finalized in commit order, taking turns round-robin with the other
uploaders' (`claim.fair_order`), so one flood cannot starve the rest. This is dittohead's
security boundary (docs/design.md, "Trust boundaries"): it runs as the dittohead user and
trusts nothing in the inbox but the kernel. It is also the one place where acknowledged data
could be lost, so every step is journaled and idempotent (see `journal`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dittohead.core.errors import DittoheadError, OutOfSpace, ServerError, describe_os_error
from dittohead.receiver import fscaps, fsops
from dittohead.receiver.accounts import user_name
from dittohead.receiver.config.checked import unknown_source
from dittohead.receiver.config.model import Config, Study
from dittohead.receiver.dropbox import (
    DONE,
    INBOX,
    PROCESSING,
    QUARANTINE,
    claims_dir,
    source_of,
)
from dittohead.receiver.processor import janitor, notices, outcomes
from dittohead.receiver.processor.claim import (
    Candidate,
    ClaimDenied,
    ClaimLost,
    EntryRejected,
    claim,
    committed_entries,
    fair_order,
    iso_utc,
    may_upload,
)
from dittohead.receiver.processor.journal import Journal, JournalEntry
from dittohead.receiver.processor.lease import Claims, Heartbeat, LeaseLost
from dittohead.receiver.processor.ledger import LEDGER_DIR, Ledger
from dittohead.receiver.processor.publish import (
    MovedFolders,
    TreeDirs,
    Upload,
    exists,
    make_dirs,
    move_new_folders,
    publish_file,
    record_moved,
)
from dittohead.receiver.processor.verify import stage_entry

log = logging.getLogger(__name__)

#: Where a pass can be killed (`fault_point`), in the order a pass reaches them.
CRASH_STEPS = (
    "claiming",  # journal "claiming" written, entry still in the inbox
    "claimed",  # entry renamed into processing/
    "copied",  # one more file copied into staging (the n-th time: n files so far)
    "staged",  # journal "staged" written
    "moved",  # a folder renamed into the tree whole, the records of its files not yet written
    "published",  # a file renamed into the tree, its ledger record not yet written
    "flushed",  # ledger records of the entry written and synced
    "done",  # entry moved to done/, journal not yet removed
    "cleaned",  # staging removed, journal not yet removed
    "quarantined",  # reason file written and entry moved to quarantine/, journal still there
)


#: bytes of queued ledger lines (~500 per file) that make a big entry's publishing stop to sync
#: the tree and write them: memory stays flat as entries grow, at one syncfs per ~8,000 files
_LEDGER_BATCH = 4 << 20
#: while an entry is copied, a background syncfs of the copies starts after every this many
_SYNC_AHEAD_FILES = 2000

#: errors from the uploader's side of a copy that mean "they changed it under us"
_ENTRY_CHANGED = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.EPERM, errno.ESTALE}
)


def _parse_crash_at(value: str | None) -> tuple[str, int, signal.Signals] | None:
    if not value:
        return None
    step, _, rest = value.partition(":")
    nth, _, how = rest.partition(":")
    if step not in CRASH_STEPS or how not in ("", "stop"):
        raise ValueError(f"DITTOHEAD_TEST_CRASH_AT: unknown step {value!r}")
    return step, int(nth or "1"), signal.SIGSTOP if how else signal.SIGKILL


# TEST ONLY. DITTOHEAD_TEST_CRASH_AT=<step>[:<n>] makes the processor SIGKILL itself the n-th
# time (default: the first) a pass reaches <step> (one of CRASH_STEPS), so that tests can prove
# a restart after a kill at exactly that instant loses nothing and stores nothing twice; with
# ``:stop`` after <n> it SIGSTOPs itself instead (a frozen host, for the fencing tests). Read
# once, at import; unset (as it always is in production) `fault_point` does nothing. Nothing
# an uploader controls can set it: the processor's environment comes from its unit.
_CRASH_AT = _parse_crash_at(os.environ.get("DITTOHEAD_TEST_CRASH_AT"))
_crash_seen: dict[str, int] = {}


def fault_point(step: str) -> None:
    """A named instant of a pass where the test-only fault hook may kill the process."""
    if _CRASH_AT is None or _CRASH_AT[0] != step:
        return
    _crash_seen[step] = _crash_seen.get(step, 0) + 1
    if _crash_seen[step] == _CRASH_AT[1]:
        os.kill(os.getpid(), _CRASH_AT[2])  # no finally blocks, no flush: a real crash


class KernelSettingError(DittoheadError):
    """fs.protected_hardlinks is off: collectors could hard-link files they do not own into
    their uploads. Set it (sysctl -w fs.protected_hardlinks=1, and in /etc/sysctl.d/) and start
    the processor again."""

    exit_code = 78


class Blocked(Exception):
    """Another entry was left part-published by a host that may still come back to it; this
    one waits (staged, with its journal) for a later pass."""

    def __init__(self, entry: str, host: str) -> None:
        super().__init__(f"{entry} of host {host} was left part-published")


class Stopped(Exception):
    """A stop was requested (SIGTERM); the pass ended between two files.

    Safe at that point: the files published so far are synced, those reached so far are in
    the ledger (the files of a folder moved whole that were not reached yet are recorded by the
    next run, which finds them by inode as after a crash), and the entry's journal says where
    to carry on, so the next run finishes it.
    """


@dataclass
class Hooks:
    """How a caller watches a pass and asks it to stop (the service: STATUS=, SIGTERM)."""

    progress: Callable[[str], None] = lambda _message: None
    stop_requested: Callable[[], bool] = lambda: False


@dataclass
class Summary:
    entries: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    deferred: int = 0
    stale: int = 0  # abandoned staging entries the janitor moved aside
    finalized: list[str] = field(default_factory=list)

    def add(self, other: Summary) -> None:
        self.entries += other.entries
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.quarantined += other.quarantined
        self.deferred += other.deferred
        self.stale += other.stale
        self.finalized += other.finalized


def check_kernel(proc: Path = Path("/proc/sys/fs/protected_hardlinks")) -> None:
    try:
        value = proc.read_text().strip()
    except OSError:
        if not Path("/proc/self").exists():
            return  # no /proc at all (not Linux): nothing to check
        # /proc is there but the setting is hidden (a unit with ProcSubset=pid, say): refuse
        # rather than run unchecked.
        raise KernelSettingError(
            f"cannot read {proc}, so fs.protected_hardlinks cannot be checked; do not hide "
            "/proc/sys from the processor (no ProcSubset=pid in its unit)"
        ) from None
    if value != "1":
        raise KernelSettingError()


@contextlib.contextmanager
def processor_lock(state_dir: Path) -> Iterator[None]:
    """One processor at a time: a second one waits for the first to finish."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / "processor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open_sub(parent_fd: int, name: str, mode: int = 0o700) -> int:
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode, dir_fd=parent_fd)
    return os.open(name, fsops.DIR_FLAGS, dir_fd=parent_fd)


class StudyRun:
    """One pass over one study: open folders, the ledger, and the journal."""

    def __init__(self, config: Config, name: str, study: Study, hooks: Hooks | None = None) -> None:
        self.config = config
        self.name = name
        self.study = study
        self.hooks = hooks or Hooks()
        self._fds: list[int] = []
        #: the entry being worked on, named in the one line an unexpected error gets
        self.current: str | None = None
        try:
            self._open()
        except BaseException:
            # A folder the processor may not reach (a destination below a parent it cannot
            # search): the caller reports the study and goes on; the fds opened so far go.
            for fd in self._fds:
                os.close(fd)
            raise

    def _open(self) -> None:
        config, name, study = self.config, self.name, self.study
        self.study_fd = study_fd = self._keep(os.open(config.study_dir(name), fsops.DIR_FLAGS))
        self.inbox = self._keep(os.open(INBOX, fsops.DIR_FLAGS, dir_fd=study_fd))
        self.processing = self._keep(_open_sub(study_fd, PROCESSING))
        self.done = self._keep(_open_sub(study_fd, DONE))
        self.quarantine = self._keep(_open_sub(study_fd, QUARANTINE))
        self.dest = self._keep(os.open(study.destination, fsops.DIR_FLAGS))
        # Plain modes: the setgid bit is inherited from the destination (2750); asking mkdir()
        # for it would be refused by the unit's RestrictSUIDSGID= seccomp filter.
        meta = self._keep(fsops.makedirs_beneath(self.dest, LEDGER_DIR, 0o750))
        # Private to dittohead: copies wait here, on the destination's file system (so that
        # publishing is a rename), until the whole entry has been verified.
        self.staging_root = self._keep(_open_sub(meta, "staging", 0o700))
        self.inbox_dev = os.fstat(self.inbox).st_dev
        # Shared by every host working on this dropbox: the study lock, journals and leases.
        claims = claims_dir(config.dropbox, name)
        self.journal = Journal(claims)
        self.claims = Claims(claims, config.cluster.host, config.cluster.lease)
        try:
            with self.claims.lock.held():
                # Journals of a processor from before they were shared are this host's own.
                self.journal.adopt(config.state_dir / "journal" / name)
                self.claims.sweep(set(self.journal.entries()))
        except BaseException:
            self.claims.close()
            raise
        summaries = config.state_dir / "ledgers"
        # A summary's temporary file left by a killed processor is garbage (host-local).
        fsops.remove_leftover_temps(summaries)
        try:
            # The uploads a crash left part-recorded are told to it as they are resumed
            # (`Ledger.add_replay`): which those are is known only once their lease is taken.
            self.ledger = Ledger(self.dest, replay=(), summary=summaries / f"{name}.summary")
        except BaseException:
            self.claims.close()
            raise
        self.heartbeat = Heartbeat(self.claims)
        #: the entry whose records the ledger may hold queued (see `close`)
        self._publishing = ""
        # Set when the destination ran out of space: the rest of this pass is left for later.
        self.out_of_space = False
        # Set when folders of the tree could not be synced one by one (a file system without
        # an honest syncfs): the records queued for them are not written (found by inode later).
        self.tree_unsynced = False

    def _keep(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def close(self) -> None:
        self.heartbeat.stop()
        try:
            # Records still queued (a pass that failed while publishing) describe files in the
            # tree: as in _publish, the tree is made durable before the ledger says so. If it
            # cannot be, they are not written: the next run finds the files by inode. Nor are
            # they if the entry was taken over meanwhile: its new holder records them.
            with self.claims.lock.held():
                flush = not self.tree_unsynced
                if self.ledger.queued_bytes and flush:
                    try:
                        self.claims.check(self._publishing)
                        fscaps.sync_written(self.dest, ())  # _publish synced what it wrote
                    except LeaseLost as exc:
                        log.warning("%s: %s", self.name, exc)
                        flush = False
                    except OSError as exc:
                        log.error("%s: the study tree could not be synced (%s)", self.name, exc)
                        flush = False
                self.ledger.close(flush=flush)
        except OutOfSpace as exc:
            # The records not written describe files the journal still lists: the next run
            # finds them again by inode and records them then.
            log.error("%s: %s; the ledger will be completed on a later run", self.name, exc)
        finally:
            self.claims.close()
            for fd in self._fds:
                os.close(fd)

    @contextlib.contextmanager
    def _fenced(self, entry: str) -> Iterator[None]:
        """Hold the study lock with our lease on `entry` checked: what happens inside cannot
        interleave with another host's work, and never happens once the entry was taken over
        (`LeaseLost`)."""
        with self.claims.lock.held():
            self.claims.check(entry)
            yield

    # -- the steps -------------------------------------------------------------------------

    def run(self) -> Summary:
        summary = Summary()
        # Abandoned staging entries (a receiver that died) are moved aside, never read.
        summary.stale += len(
            janitor.sweep(self.study_fd, self.inbox, self.config.limits.stale_after)
        )
        # First finish whatever a previous run (or a host that died) was doing when it
        # stopped; entries another live host holds are its own.
        for entry in self.journal.entries():
            self._check_stop()
            item = self._take_over(entry)
            if item is not None:
                summary.add(self._resume(item))
            if self.out_of_space:
                return summary
        # Another host may hold an uploader's earlier entry; that uploader's later ones are
        # skipped then, and looked at again once this host claimed something else meanwhile
        # (the other host may have finished by then): a pass ends with nothing claimable.
        again = True
        while again and not self.out_of_space:
            skipped: set[int] = set()  # uploaders with an entry another host is working on
            claimed = self._claim_round(skipped, summary)
            again = bool(skipped) and claimed
        return summary

    def _claim_round(self, skipped: set[int], summary: Summary) -> bool:
        """Claim and finalize what the inbox holds now; whether anything was claimed."""
        claimed = False
        allowed = []
        for cand in committed_entries(self.inbox):
            if may_upload(cand.uid, self.study.uploaders):
                allowed.append(cand)
                continue
            log.warning(
                "%s: inbox entry %s belongs to %s, who may not upload to this study; left alone",
                self.name,
                cand.name,
                user_name(cand.uid),
            )
        # Each uploader sees at once that the server has their upload (dittohead status), not
        # only when its turn comes: the entries ahead of it may take minutes.
        for cand in allowed:
            outcomes.waiting(self.study_fd, cand.uid, cand.name, iso_utc(cand.ctime_ns))
        for cand in fair_order(allowed):
            self._check_stop()
            if cand.uid in skipped:
                continue  # their later entries wait too: versions follow the commit order
            item = self._claim(cand, skipped, summary)
            if item is None:
                continue
            fault_point("claimed")
            summary.add(self._resume(item))
            claimed = True
            if self.out_of_space:
                # Stop here rather than let this uploader's later entries (or anyone's) take
                # version names ahead of the deferred one.
                break
        return claimed

    def _take_over(self, entry: str) -> JournalEntry | None:
        """The journal of `entry` with its lease made ours, if nobody else may be working on
        it (its holder is known dead or its lease expired); None to leave it be."""
        with self.claims.lock.held():
            item = self.journal.read(entry)
            if item is None:
                return None  # finished by its holder since the listing
            lease = self.claims.read(entry)
            if not self.claims.may_take(lease):
                return None
            if lease is not None and lease.holder.host != self.claims.me.host:
                log.warning(
                    "%s: taking over %s from host %s, whose lease expired",
                    self.name,
                    entry,
                    lease.holder.host,
                )
            self.claims.take(entry, item.uid, publishing=lease is not None and lease.publishing)
            return item

    def _clear_the_way(self, entry: str) -> None:
        """Under the lock, before `entry` is published: finish first any entry left
        part-published (`Claims.publishing`), or raise `Blocked` while its holder may still
        come back to it. Files it put into the tree may have no ledger record yet: another
        entry's duplicate check would not see them and store the same content again."""
        for lease in self.claims.publishing():
            if lease.entry == entry:
                continue
            item = self._take_over(lease.entry)
            if item is None:
                raise Blocked(lease.entry, lease.holder.host)
            self._resume_entry(item)

    def _claim(self, cand: Candidate, skipped: set[int], summary: Summary) -> JournalEntry | None:
        """Claim `cand` under the study lock: journal, lease, then the move to processing/.
        None when it is not ours to finish (another host has it or its uploader's earlier
        entry; it left the inbox; it was refused and quarantined)."""
        with self.claims.lock.held():
            if self.journal.read(cand.name) is not None:
                # Another host claimed it since the listing: this uploader's later entries
                # wait for it.
                skipped.add(cand.uid)
                return None
            if any(lease.uid == cand.uid for lease in self.claims.leases()):
                # Another host works on an earlier entry of this uploader: this one must wait,
                # or its versions could take names ahead of that one's.
                skipped.add(cand.uid)
                return None
            item = JournalEntry(
                entry=cand.name,
                study=self.name,
                step="claiming",
                uid=cand.uid,
                received_at=iso_utc(cand.ctime_ns),
                dev=cand.dev,
                ino=cand.ino,
            )
            self.journal.write(item)
            self.claims.take(cand.name, cand.uid)
            fault_point("claiming")
            try:
                claim(self.inbox, self.processing, cand)
            except ClaimDenied as exc:
                log.warning("%s: %s", self.name, exc)
                self._forget_claim(cand.name)
                return None
            except ClaimLost as exc:
                log.info("%s: %s", self.name, exc)
                self._forget_claim(cand.name)
                if not any(exists(fd, cand.name) for fd in (self.done, self.quarantine)):
                    outcomes.forget(self.study_fd, cand.uid, cand.name)  # its owner took it back
                return None
            except EntryRejected as exc:
                summary.add(self._quarantine(cand.name, str(exc)))
                return None
            return item

    def _forget_claim(self, entry: str) -> None:
        self.journal.remove(entry)
        self.claims.release(entry)

    def _resume(self, item: JournalEntry) -> Summary:
        self.current = item.entry
        try:
            with self.heartbeat.renewing(item.entry):
                summary = self._resume_entry(item)
        except LeaseLost as exc:
            # Frozen past our lease: another host finishes it; nothing was written since.
            log.warning("%s: %s; left to it", self.name, exc)
            summary = Summary()
        except Blocked as exc:
            log.warning(
                "%s: %s: %s is published after it, on a later pass", self.name, exc, item.entry
            )
            summary = Summary(deferred=1)
        self.current = None  # not in a finally: an error keeps the entry for the caller's line
        return summary

    def _resume_entry(self, item: JournalEntry) -> Summary:
        with self._fenced(item.entry):
            # Names a move reserved where the file system lacks RENAME_NOREPLACE (an empty
            # 0000 folder), left by a crash before the rename onto them: the move never
            # happened. One in done/ would otherwise pass for the entry finished.
            for fd in (self.processing, self.done, self.quarantine):
                fscaps.remove_placeholder(fd, item.entry)
        if exists(self.done, item.entry) or exists(self.quarantine, item.entry):
            # Finished (or quarantined) before the journal could be removed.
            with self._fenced(item.entry):
                notices.replayed(self.config, self.name, item, self.quarantine)  # notice hook
                self._cleanup(item.entry)
            return Summary()
        if not exists(self.processing, item.entry):
            if item.step == "claiming":
                # The claim never happened (crash between journal and rename): forget it.
                with self._fenced(item.entry):
                    self._forget_claim(item.entry)
                return Summary()
            raise ServerError(f"{self.name}: {item.entry} is journaled but not in processing/")
        try:
            if item.step == "claiming":
                # The receiver refuses an unknown station; one that got past it (written into
                # the inbox by hand, or before 'sources' was changed) is refused here.
                refused = unknown_source(self.config.sources, source_of(item.entry))
                if refused is not None:
                    raise EntryRejected(refused)
                self.hooks.progress(f"verifying {self.name} {item.entry}")
                self._stage(item)
            elif item.step == "staged":
                # Resumed after a crash or taken over: some files may be recorded already.
                with self._fenced(item.entry):
                    self.ledger.add_replay(item.entry)
            # The whole of publishing under the lock: the duplicate check, the version names,
            # the ledger's chain and the move to done/ are decided on what every host did.
            with self._fenced(item.entry):
                self._clear_the_way(item.entry)
                self.claims.mark_publishing(item.entry)
                self.ledger.catch_up()  # what other hosts recorded since
                return self._publish(item)
        except EntryRejected as exc:
            return self._quarantine(item.entry, str(exc))
        except OutOfSpace as exc:
            log.error("%s: %s: %s; will retry on a later run", self.name, item.entry, exc.message)
            self.out_of_space = True
            if item.step == "staged":
                # Some files may be published already. Keep the staged copies and the journal
                # (the entry stays in processing/): the next run carries on from them, and finds
                # any copy renamed but not yet recorded by its inode. Record what moved now if
                # the ledger still has room; if not, that replay records it.
                with (
                    contextlib.suppress(OSError, OutOfSpace, LeaseLost),
                    self._fenced(item.entry),
                ):
                    if not self.tree_unsynced:
                        fscaps.sync_written(self.dest, ())  # _publish synced what it wrote
                        self.ledger.flush()
            else:
                # Not staged: nothing is published; the journal still says "claiming", so the
                # next run verifies and copies the entry again from scratch.
                with contextlib.suppress(LeaseLost), self._fenced(item.entry):
                    self._remove_staging(item.entry)
            return Summary(deferred=1)

    def _stage(self, item: JournalEntry) -> None:
        self._remove_staging(item.entry)  # a partial copy from an interrupted run
        try:
            staging = _open_sub(self.staging_root, item.entry)
            entry_fd = os.open(item.entry, fsops.DIR_FLAGS, dir_fd=self.processing)
            # Many small copies: let the kernel write them back while copying goes on, so the
            # syncfs below finds little left (S, 20,000 files: median 1.47 -> 1.35 s a pass).
            ahead = fsops.SyncAhead(staging)

            def copied(count: int) -> None:
                fault_point("copied")
                if count % _SYNC_AHEAD_FILES == 0:
                    ahead.start()

            try:
                try:
                    staged = stage_entry(
                        entry_fd,
                        item.uid,
                        self.inbox_dev,
                        self.config.limits,
                        staging,
                        after_copy=copied,
                    )
                except BaseException:
                    # The entry's own failure is what counts; the copies are dropped anyway.
                    with contextlib.suppress(OSError):
                        ahead.finish()
                    raise
                ahead.finish()  # before the fd closes; raises what the thread met
                fscaps.sync_tree(staging)
            finally:
                os.close(entry_fd)
                os.close(staging)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfSpace("the study's destination is out of space") from exc
            if exc.errno in _ENTRY_CHANGED:
                # The uploader owns every object in the entry and can still remove, swap or
                # chmod any of them through a held fd: whatever the kernel then refuses costs
                # them their entry, never the pass (nor the studies after this one). The
                # staging side is the processor's own 0700 folder, made a moment ago.
                what = (
                    "the processor may not read part of the entry (its mode was changed)"
                    if exc.errno in (errno.EACCES, errno.EPERM)
                    else "the entry changed while it was being read"
                )
                raise EntryRejected(f"{what}: {exc.strerror}") from None
            raise
        item.step = "staged"
        item.files = list(staged.files)
        item.dirs = list(staged.dirs)
        with self._fenced(item.entry):
            self.journal.write(item)
        fault_point("staged")

    def _publish(self, item: JournalEntry) -> Summary:
        up = Upload(
            upload=item.entry,
            uploader=user_name(item.uid),
            uid=item.uid,
            source=source_of(item.entry),
            received_at=item.received_at,
            recorded_at=iso_utc(time.time_ns()),
        )
        summary = Summary(entries=1, finalized=[item.entry])
        self._publishing = item.entry
        finished = notices.Finished()  # notice hook: counts and first names
        staging = os.open(item.entry, fsops.DIR_FLAGS, dir_fd=self.staging_root)
        tree = TreeDirs(self.dest)
        # Taken from the entry and let go one by one as they are published (the journal on
        # disk keeps the list for a replay), so memory does not hold every staged file and
        # every queued ledger line at once.
        todo, item.files = item.files, []
        todo.reverse()
        total = len(todo)
        published: list[tuple[str, str, str]] = []  # for the uploader's outcome
        moved = MovedFolders()
        # The history of just this entry's paths, in one read of the ledger.
        self.ledger.prepare(staged.path for staged in todo)

        try:
            try:
                # New folders arrive whole, one rename each (their files' records follow in
                # the loop below); before make_dirs, which would otherwise make them.
                move_new_folders(
                    tree,
                    staging,
                    self.ledger,
                    up.upload,
                    files=todo,
                    dirs=item.dirs,
                    into=moved,
                    after_move=lambda: fault_point("moved"),
                )
                make_dirs(tree, item.dirs, moved)
                while todo:
                    done = total - len(todo)
                    self.hooks.progress(
                        f"finalizing {self.name} {item.entry}: {done}/{total} files"
                    )
                    if self.hooks.stop_requested():
                        # Between two files: make what is published durable and recorded,
                        # then leave the entry in processing/ with its journal for the next run
                        # (files that came with a folder and were not reached yet are in the
                        # tree and synced: the next run records them, finding them by inode).
                        fscaps.sync_written(self.dest, [*tree.fds(), staging])
                        self.ledger.flush()
                        raise Stopped()
                    staged = todo.pop()
                    record = publish_file(tree, staging, self.ledger, up, staged, moved=moved)
                    published.append((record.path, record.outcome, record.stored_as))
                    finished.add(record.outcome, record.stored_as)  # notice hook
                    if record.outcome == "stored":
                        summary.stored += 1
                        # The record is only queued: on disk, the file is in the tree
                        # unrecorded (renamed alone, or with its folder before this loop).
                        fault_point("published")
                    else:
                        summary.duplicates += 1
                    if self.ledger.queued_bytes >= _LEDGER_BATCH:
                        # A big entry: make what is published so far durable and record it,
                        # as at a stop (a replay skips what is recorded), so the queue stays
                        # small.
                        fscaps.sync_written(self.dest, [*tree.fds(), staging])
                        self.ledger.flush()
            except Stopped:
                raise  # between two files, as before folders moved whole: nothing more to write
            except BaseException:
                # Every file that arrived with a folder is in the tree: queue the records of
                # those not queued yet, for the caller's flush (out of space) or the ledger's
                # close to write. The file being published when this came, if any, is no
                # longer in `todo`: it went by itself (a moved folder's file raises nothing
                # before its record). A real kill writes nothing: the next run finds them.
                record_moved(self.ledger, up, todo, moved)
                # Written now, while the lock is held: once it is let go, another host's
                # duplicate check must see these files. The folders written into are synced
                # one by one before they close where syncfs is not honest; if that fails, no
                # record is written (the next run finds the files by inode).
                try:
                    fscaps.sync_written(self.dest, [*tree.fds(), staging])
                except OSError:
                    self.tree_unsynced = True
                else:
                    with contextlib.suppress(OSError, OutOfSpace):
                        self.ledger.flush()
                raise
            # Data and names on disk before the ledger says "stored" (one syncfs, not one
            # fsync per file); then the ledger; only then is the entry done.
            fscaps.sync_written(self.dest, [*tree.fds(), staging])
            self.ledger.flush()
            fault_point("flushed")
        finally:
            tree.close()
            os.close(staging)
        outcomes.finalized(self.study_fd, item.uid, item.entry, item.received_at, published)
        notices.finalized(self.config, self.name, item, finished)  # notice hook, before done/
        self._move_out(item.entry, self.done)
        os.fsync(self.done)
        os.fsync(self.processing)
        fault_point("done")
        self._remove_staging(item.entry)
        fault_point("cleaned")
        self._forget_claim(item.entry)
        log.info(
            "%s: finalized %s from %s (%d stored, %d duplicates)",
            self.name,
            item.entry,
            up.uploader,
            summary.stored,
            summary.duplicates,
        )
        return summary

    def _quarantine(self, entry: str, reason: str) -> Summary:
        with self._fenced(entry):
            return self._quarantine_fenced(entry, reason)

    def _quarantine_fenced(self, entry: str, reason: str) -> Summary:
        log.error("%s: quarantined %s: %s", self.name, entry, reason)
        # The reason first, then the move: a crash in between leaves the entry in processing/
        # to be judged again, never an entry in quarantine/ without its reason.
        fd = os.open(
            f"{entry}.reason",
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o640,
            dir_fd=self.quarantine,
        )
        try:
            os.write(fd, f"{reason}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(self.quarantine)
        outcomes.quarantined(self.study_fd, self.journal, entry, reason)
        with contextlib.suppress(FileNotFoundError):
            self._move_out(entry, self.quarantine)
        os.fsync(self.quarantine)
        fault_point("quarantined")
        notices.quarantined(self.config, self.name, entry, self.journal.read(entry), reason)  # hook
        self._cleanup(entry)
        return Summary(quarantined=1)

    def _move_out(self, entry: str, to_fd: int) -> None:
        """Move a finished entry from processing/ to done/ or quarantine/.

        The uploader can take the write bit off their folder at any time (they own it, and a
        held fd survives the claim), and a folder cannot change parent without it. Then the
        folder stays in processing/ and a ``<entry>.stuck`` note beside where it should be
        says so; the entry is finished all the same (its journal goes), so it costs nobody
        else anything. Writing the note again after a crash is harmless.
        """
        try:
            fscaps.rename_noreplace(self.processing, entry, to_fd, entry)
        except PermissionError:
            log.warning(
                "%s: %s: its owner took away the write bit a move needs; left in processing/",
                self.name,
                entry,
            )
            fd = os.open(
                f"{entry}.stuck",
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o640,
                dir_fd=to_fd,
            )
            try:
                os.write(fd, b"left in processing/: its owner removed the write permission\n")
                os.fsync(fd)
            finally:
                os.close(fd)

    def _cleanup(self, entry: str) -> None:
        self._remove_staging(entry)
        self._forget_claim(entry)

    def _remove_staging(self, entry: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(entry, dir_fd=self.staging_root)

    def _check_stop(self) -> None:
        if self.hooks.stop_requested():
            raise Stopped()


class StudiesFailed(ServerError):
    """Some studies could not be worked on in this pass; the others were."""

    def __init__(self, failed: list[str], summary: Summary) -> None:
        super().__init__(
            f"{len(failed)} {'study' if len(failed) == 1 else 'studies'} could not be worked on "
            f"in this pass ({', '.join(failed)}): the lines above say why; the other studies "
            "were finalized. 'dittohead-admin check' names what to fix"
        )
        self.failed = failed
        self.summary = summary


def _study_trouble(name: str, exc: BaseException, current: str | None = None) -> str:
    """The one line for a study the pass had to leave: what happened and what to do."""
    if isinstance(exc, DittoheadError):
        message = exc.message.removeprefix(f"{name}: ")  # some already name the study
        return f"{name}: {message}; the other studies carry on"
    if isinstance(exc, PermissionError):
        where = exc.filename if exc.filename is not None else "a folder"
        return (
            f"{name}: the processor may not reach {where} ({exc.strerror}); the study is "
            "skipped and the other studies carry on. 'dittohead-admin check' names the folder "
            "to fix"
        )
    if isinstance(exc, OSError):
        what = describe_os_error(exc)
        return f"{name}: {what}; the study is skipped and the other studies carry on"
    upload = f" while finalizing {current}" if current else ""
    # Not ours to explain: say so plainly, keep the upload (its journal) for the next pass,
    # and leave the traceback to -v.
    return (
        f"{name}: unexpected error{upload} ({type(exc).__name__}: {exc}); the upload stays "
        "where it is for the next pass and the other studies carry on (run with -v for details)"
    )


def run_once(config: Config, hooks: Hooks | None = None) -> Summary:
    """Finalize everything pending in every study; return what was done.

    Raises `Stopped` when `hooks` asks to stop; the work is then resumed by the next run.
    A study that cannot be worked on (a destination the service user cannot reach, a damaged
    ledger, a journal that disagrees with the folders, any unexpected error in one of its
    entries) gets one logged line and is left so that the other studies still flow; the
    entry it was on keeps its journal, so the next pass resumes it as after a crash.
    `StudiesFailed` is raised at the end when any study was left.
    """
    summary = Summary()
    failed: list[str] = []
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(processor_lock(config.state_dir))
        except OSError as exc:
            raise ServerError(
                f"cannot use the state folder {config.state_dir} ({describe_os_error(exc)}); "
                "'dittohead-admin check' names what to fix"
            ) from None
        for name, study in config.studies.items():
            try:
                run = StudyRun(config, name, study, hooks)
            except FileNotFoundError as exc:
                log.error("%s: %s is missing; run 'dittohead-admin init'", name, exc.filename)
                continue
            except Exception as exc:
                log.error("%s", _study_trouble(name, exc))
                log.debug("details", exc_info=True)
                failed.append(name)
                continue
            try:
                summary.add(run.run())
            except Stopped:
                raise
            except Exception as exc:
                log.error("%s", _study_trouble(name, exc, run.current))
                log.debug("details", exc_info=True)
                failed.append(name)
            finally:
                run.close()
        notices.after_pass(config)  # notice hook: disk levels and silent stations, every pass
    if failed:
        raise StudiesFailed(failed, summary)
    return summary
