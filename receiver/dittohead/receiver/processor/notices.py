"""The processor's side of notifications: a durable queue of notices, and the disk and
silence checks that add to it (docs/design.md, "Notifications").

The processor has no network; it only writes what happened into ``<state_dir>/notices/``, and
``dittohead-notify`` (its own unit, network to the relay only) mails it:

- ``queue/<id>.json`` — one file per notice, written whole (temporary file, fsync, rename, fsync
  of the folder), so a crash leaves a notice or none, never half of one. ``dittohead-notify``
  moves it to ``sent/<id>.json`` once every recipient has it.
- The id is stable per event: ``finalized.<study>.<entry>``, ``quarantined.<study>.<entry>``,
  ``disk.<fs>.<level>.<n>`` (the n-th crossing of that level), ``silent.<station>.<last seen, ms>``.
  Recording an event whose id is already in ``queue/`` or ``sent/`` does nothing, which is what
  makes a notice exactly-once although a pass killed at any instant repeats its last steps:
  an entry notice is written *before* the move that ends the entry (done/ or quarantine/), and
  the replay that repeats the move finds the notice already there.

**Shared decisions.** Several hosts may work on one dropbox, each with its own ``state_dir``
and outbox. An entry's notice is decided by the host that finishes the entry; the disk and
silence checks concern everyone's uploads, so their state is the hosts' common one, in
``<dropbox>/.notices/`` (dittohead 0700, made by ``dittohead-admin init``):

- ``levels.json`` — per file system (named by what it holds, the same on every host: its
  mount paths may differ): the level announced and the crossings so far;
- ``stations.json`` — per station: last seen (from every host's finished entries), its
  studies, the silence announced;
- ``lock`` — an fcntl lock, held for each read-decide-write of either document, so that one
  crossing or one silence is decided by exactly one host, which queues the notice in its own
  outbox. Each check writes the notice first and the state after: a kill in between repeats
  the same id, which does nothing on that host (on another host that decides it in that
  instant it is a second mail: the one duplicate left, see docs/admins/scale-out.md).

Without that folder (an older dropbox not yet given it by ``init``) the state and its lock are
kept in ``<state_dir>/notices/`` as before: right for one host, per host on several (logged).

Without ``mail`` in the configuration nothing is recorded at all (nobody would read it).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec

from dittohead.receiver import fsops
from dittohead.receiver.accounts import user_name
from dittohead.receiver.config.model import Config
from dittohead.receiver.dropbox import shared_notices_dir, source_of
from dittohead.receiver.processor.journal import JournalEntry
from dittohead.receiver.processor.lease import StudyLock

log = logging.getLogger(__name__)
_P = ParamSpec("_P")

NOTICES = "notices"
QUEUE = "queue"
SENT = "sent"
#: the state of the disk check (per mount point: the level announced, crossings so far)
LEVELS = "levels.json"
#: the state of the silence check (per station: last seen, its studies, the silence announced)
STATIONS = "stations.json"
#: how many stored names a finalized notice carries (the mail shows the first few)
NAMES_KEPT = 10
#: percentage points a file system must drop below an announced level before it is announced
#: again: a disk hovering at 90.0 % must not mail at every pass as it wobbles across the line
HYSTERESIS = 2.0
#: a station's last-seen time is rewritten only when it moved on by this share of
#: ``silent_after``: a busy station costs one small write now and then, not one per upload,
#: and the silence is announced at most this late
LAST_SEEN_SLACK = 0.01


@dataclass(frozen=True, slots=True)
class Notice:
    """One event somebody should hear about. Fields not used by a kind stay empty."""

    id: str
    kind: str  # finalized | quarantined | disk | silent
    created: float  # the processor's clock, seconds since the epoch
    study: str = ""
    entry: str = ""
    source: str = ""
    uploader: str = ""
    received_at: str = ""  # ISO 8601 UTC, the server's clock
    files: int = 0
    stored: int = 0
    duplicates: int = 0
    names: tuple[str, ...] = ()  # the first NAMES_KEPT stored names
    reason: str = ""
    mount: str = ""  # the file system (its mount point) of a disk notice
    what: str = ""  # of a disk notice: "destination" or "inbox"
    studies: tuple[str, ...] = ()  # the studies a disk or silence notice concerns
    level: int = 0
    percent: float = 0.0
    last_seen: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Notice:
        doc: dict[str, Any] = json.loads(data)
        known = {f.name for f in fields(cls)}
        doc = {k: v for k, v in doc.items() if k in known}
        for key in ("names", "studies"):
            doc[key] = tuple(doc.get(key, ()))
        return cls(**doc)


def notices_dir(state_dir: Path) -> Path:
    return state_dir / NOTICES


class Outbox:
    """Where the processor records notices: exactly once per id, durably."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = notices_dir(state_dir)
        self.queue = self.dir / QUEUE
        self.sent = self.dir / SENT
        for folder in (self.dir, self.queue, self.sent):
            folder.mkdir(mode=0o700, exist_ok=True)
        fsops.remove_leftover_temps(self.queue)
        fsops.remove_leftover_temps(self.dir)

    def known(self, notice_id: str) -> bool:
        # queue/ first: dittohead-notify moves a file from queue/ to sent/ with one rename, so
        # looking in this order always finds it in one place or the other.
        name = f"{notice_id}.json"
        return (self.queue / name).exists() or (self.sent / name).exists()

    def record(self, notice: Notice) -> bool:
        """Queue `notice` unless its id was recorded before; True when it was queued now."""
        if self.known(notice.id):
            return False
        fsops.replace_file(
            self.queue / f"{notice.id}.json", [notice.to_json()], mode=0o600, sync_folder=True
        )
        log.info("notice %s queued for mail", notice.id)
        return True


#: shared folders found missing (and said so) by this process
_UNSHARED: set[Path] = set()


class Decisions:
    """The state of the disk and silence checks, which every host decides on together
    (see the module): ``<dropbox>/.notices/``, or ``<state_dir>/notices/`` without it."""

    def __init__(self, config: Config, outbox: Outbox) -> None:
        shared = shared_notices_dir(config.dropbox)
        self.shared = shared.is_dir()
        if not self.shared and shared not in _UNSHARED:
            _UNSHARED.add(shared)  # said once per process, not at every upload
            log.warning(
                "%s is missing: disk levels and silent stations are judged by this host alone "
                "(run 'dittohead-admin init' to share them between hosts)",
                shared,
            )
        self.dir = shared if self.shared else outbox.dir
        #: where this host kept the state before the dropbox had .notices/ (an upgrade)
        self.local = outbox.dir

    @contextlib.contextmanager
    def state(self, name: str) -> Iterator[dict[str, Any]]:
        """The document `name`, held under the lock: changes made to it are written back
        (atomically: temporary file, rename, fsync of the folder) when the block ends."""
        lock = StudyLock(self.dir)
        try:
            with lock.held():
                # Every write here happens under the lock: a temporary file left now belongs
                # to a process (of any host) that was killed.
                fsops.remove_leftover_temps(self.dir)
                doc = self._read(name)
                before = json.dumps(doc, sort_keys=True)
                yield doc
                after = json.dumps(doc, sort_keys=True)
                if after != before:
                    fsops.replace_file(self.dir / name, [after.encode()], sync_folder=True)
        finally:
            lock.close()

    def _read(self, name: str) -> dict[str, Any]:
        path = self.dir / name
        if self.dir != self.local and not path.exists():
            # The first decision in a new .notices/ starts from what this host knew before (an
            # upgraded dropbox): stations seen stay seen, levels announced stay announced.
            path = self.local / name
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError:
            # Only ever replaced whole; a damaged file means someone edited it: start afresh
            # (at worst one notice is repeated) rather than stop the pass.
            log.warning("%s is damaged; its state starts afresh", path)
            return {}
        return doc if isinstance(doc, dict) else {}


# -- entries ------------------------------------------------------------------------------------


@dataclass
class Finished:
    """What a finalized entry's notice tells: counts and the first stored names (the
    processor adds each file's ledger record as it publishes it)."""

    stored: int = 0
    duplicates: int = 0
    names: list[str] = field(default_factory=list)

    def add(self, outcome: str, stored_as: str) -> None:
        if outcome == "stored":
            self.stored += 1
            if len(self.names) < NAMES_KEPT:
                self.names.append(stored_as)
        else:
            self.duplicates += 1


def _time_of(iso: str) -> float:
    if not iso:
        return time.time()
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def _saw_station(config: Config, outbox: Outbox, study: str, source: str, when: float) -> None:
    """Remember that `source` sent to `study` at `when` (for the silence check), in the state
    every host shares: a station is seen by whichever host finished its upload."""
    after = config.stations.silent_after
    if after is None:
        return
    with Decisions(config, outbox).state(STATIONS) as doc:
        seen = doc.setdefault(source, {"last": 0.0, "studies": [], "announced": None})
        if when - float(seen.get("last", 0.0)) > after * LAST_SEEN_SLACK:
            seen["last"] = when
        if study not in seen.setdefault("studies", []):
            seen["studies"] = sorted([*seen["studies"], study])


def _source(entry: str) -> str:
    try:
        return source_of(entry)
    except ValueError:
        return ""


def _who(item: JournalEntry | None) -> tuple[str, str]:
    if item is None:
        return "", ""
    return user_name(item.uid), item.received_at


def _guarded(
    record: Callable[Concatenate[Config, _P], None],
) -> Callable[Concatenate[Config, _P], None]:
    """A notice that cannot be written is logged, never raised: the upload it is about is
    safe either way, and finalizing the rest matters more than telling about it."""

    @functools.wraps(record)
    def call(config: Config, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        if config.mail is None:
            return  # nobody would read it
        try:
            record(config, *args, **kwargs)
        except OSError as exc:
            log.error("a notice could not be recorded (%s); nobody is mailed about it", exc)

    return call


@_guarded
def finalized(config: Config, study: str, item: JournalEntry, finished: Finished) -> None:
    """Record a finalized entry. Called *before* the entry moves to done/: a replay after a
    crash finishes the move and finds the notice already there (see the module)."""
    assert config.mail is not None
    outbox = Outbox(config.state_dir)
    uploader, received_at = _who(item)
    source = _source(item.entry)
    _saw_station(config, outbox, study, source, _time_of(received_at))
    if not config.mail.on_success:
        return
    outbox.record(
        Notice(
            id=f"finalized.{study}.{item.entry}",
            kind="finalized",
            created=time.time(),
            study=study,
            entry=item.entry,
            source=source,
            uploader=uploader,
            received_at=received_at,
            files=finished.stored + finished.duplicates,
            stored=finished.stored,
            duplicates=finished.duplicates,
            names=tuple(finished.names),
        )
    )


@_guarded
def quarantined(
    config: Config, study: str, entry: str, item: JournalEntry | None, reason: str
) -> None:
    """Record a quarantined entry. Called once it is in quarantine/ (never before: an entry
    that a crash leaves in processing/ is judged again and may yet be finalized), and again by
    the replay that finds it there with its journal: the id makes the second call a no-op."""
    outbox = Outbox(config.state_dir)
    uploader, received_at = _who(item)
    source = _source(entry)
    _saw_station(config, outbox, study, source, _time_of(received_at))
    outbox.record(
        Notice(
            id=f"quarantined.{study}.{entry}",
            kind="quarantined",
            created=time.time(),
            study=study,
            entry=entry,
            source=source,
            uploader=uploader,
            received_at=received_at,
            reason=reason,
        )
    )


# -- disk levels --------------------------------------------------------------------------------


def percent_used(path: Path) -> float:
    """How full `path`'s file system is, as ``df`` counts it (blocks reserved for root are
    neither used nor available to dittohead, so they are left out)."""
    st = os.statvfs(path)
    used = st.f_blocks - st.f_bfree
    usable = used + st.f_bavail
    return 100.0 * used / usable if usable else 0.0


def mount_point(path: Path) -> Path:
    """The mount point of `path`'s file system: the highest folder above it on the same device."""
    path = path.resolve()
    dev = os.stat(path).st_dev
    while path.parent != path:
        try:
            if os.stat(path.parent).st_dev != dev:
                break
        except OSError:
            break
        path = path.parent
    return path


def _file_systems(config: Config) -> dict[Path, tuple[str, list[str]]]:
    """Each file system to watch: its mount point → (what, the studies it concerns)."""
    found: dict[Path, tuple[str, list[str]]] = {}
    try:
        inbox = mount_point(config.dropbox)
    except OSError as exc:
        log.warning("cannot check the disk of %s: %s", config.dropbox, exc.strerror)
    else:
        found[inbox] = ("inbox", sorted(config.studies))
    for name, study in config.studies.items():
        try:
            mount = mount_point(study.destination)
        except OSError as exc:
            log.warning("cannot check the disk of %s: %s", study.destination, exc.strerror)
            continue
        what, studies = found.setdefault(mount, ("destination", []))
        if what == "inbox":
            # The inbox's file system holds this destination too: one notice, "destination"
            # (the bigger worry: stored data), naming every study that shares it.
            found[mount] = ("destination", studies)
        if name not in studies:
            studies.append(name)
    return found


def next_level(levels: tuple[int, ...], announced: int, percent: float) -> tuple[int, int]:
    """(level to announce now or 0, the announced level afterwards).

    A level is announced when `percent` reaches it and it is above the one announced last;
    the announced level falls back (re-arming the levels above) only once `percent` is
    `HYSTERESIS` points below it.
    """
    while announced and percent < announced - HYSTERESIS:
        lower = [level for level in levels if level < announced]
        announced = lower[-1] if lower else 0
    reached = [level for level in levels if percent >= level]
    top = reached[-1] if reached else 0
    if top > announced:
        return top, top
    return 0, announced


def fs_key(what: str, studies: list[str]) -> str:
    """A file system's name in the shared state: what it holds, not where this host mounts
    it (the hosts' mount paths may differ), so every host names it alike."""
    return f"{what}:{','.join(sorted(studies))}"


def check_disks(config: Config, decisions: Decisions, outbox: Outbox, now: float) -> None:
    measured = []
    for mount, (what, studies) in _file_systems(config).items():
        try:
            measured.append((mount, what, studies, percent_used(mount)))
        except OSError as exc:
            log.warning("cannot check the disk of %s: %s", mount, exc.strerror)
    with decisions.state(LEVELS) as doc:
        for old in [key for key in doc if key.startswith("/")]:
            # Keyed by this host's mount point before the state was shared (an upgrade): a
            # level announced then stays announced under the file system's new name.
            state = doc.pop(old)
            for mount, what, studies, _ in measured:
                if str(mount) == old:
                    doc.setdefault(fs_key(what, studies), state)
        for mount, what, studies, percent in measured:
            key = fs_key(what, studies)
            state = doc.setdefault(key, {"announced": 0, "crossings": 0})
            level, announced = next_level(config.disk.warn_percent, state["announced"], percent)
            if level:
                crossing = state["crossings"] + 1
                digest = hashlib.sha256(key.encode()).hexdigest()[:12]
                outbox.record(
                    Notice(
                        id=f"disk.{digest}.{level}.{crossing}",
                        kind="disk",
                        created=now,
                        mount=str(mount),
                        what=what,
                        studies=tuple(sorted(studies)),
                        level=level,
                        percent=round(percent, 1),
                    )
                )
                log.warning("%s (%s) is %.1f%% full: level %d%%", mount, what, percent, level)
                state["crossings"] = crossing
            state["announced"] = announced


# -- silent stations ----------------------------------------------------------------------------


def check_stations(config: Config, decisions: Decisions, outbox: Outbox, now: float) -> None:
    after = config.stations.silent_after
    if after is None:
        return
    with decisions.state(STATIONS) as doc:
        for source, seen in sorted(doc.items()):
            last = float(seen.get("last", 0.0))
            if not last or now - last <= after or seen.get("announced") == last:
                continue
            outbox.record(
                Notice(
                    id=f"silent.{source}.{int(last * 1000)}",
                    kind="silent",
                    created=now,
                    source=source,
                    studies=tuple(seen.get("studies", ())),
                    last_seen=last,
                )
            )
            log.warning("station %s has sent nothing since %s", source, last)
            seen["announced"] = last


def after_pass(config: Config, clock: Callable[[], float] = time.time) -> None:
    """The checks every pass ends with (the socket's and the timer's alike). A failure here is
    logged, never raised: finalizing uploads matters more than warning about them."""
    if config.mail is None:
        return
    try:
        outbox = Outbox(config.state_dir)
        decisions = Decisions(config, outbox)
        now = clock()
        check_disks(config, decisions, outbox, now)
        check_stations(config, decisions, outbox, now)
    except OSError as exc:
        log.error("the disk and station checks failed: %s", exc)


@_guarded
def replayed(config: Config, study: str, item: JournalEntry, quarantine_fd: int) -> None:
    """An entry found finished by a replay (its journal outlived it): a quarantined one may
    have been moved just before the crash that kept its notice from being written."""
    if not _exists(quarantine_fd, item.entry):
        return  # a finalized one wrote its notice before its move (see `finalized`)
    reason = "(the reason could not be read)"
    with contextlib.suppress(OSError):
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(f"{item.entry}.reason", flags, dir_fd=quarantine_fd)
        try:
            reason = os.read(fd, 4096).decode("utf-8", "replace").strip()
        finally:
            os.close(fd)
    quarantined(config, study, item.entry, item, reason)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
