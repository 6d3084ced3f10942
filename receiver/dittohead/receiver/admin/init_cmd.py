"""``dittohead-admin init``: create the dropbox folders and missing destinations.

Owners and modes are those of the dropbox contract (`dittohead.receiver.dropbox`,
docs/design.md). Idempotent: run it again after adding a study. When run as root it also sets
owners and groups; run by anyone else (the demo, the tests) it creates the same folders owned
by the caller. It never loosens an existing folder's mode that is stricter than the layout's
unless given ``--force``.
"""

from __future__ import annotations

import argparse
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from dittohead.core.errors import ConfigError, DittoheadError
from dittohead.receiver.accounts import group_name
from dittohead.receiver.config.model import Config
from dittohead.receiver.dropbox import SHARED_NOTICES_MODE, STUDY_FOLDERS, shared_notices_dir


@dataclass(frozen=True)
class Want:
    path: Path
    mode: int
    uid: int
    gid: int


class InitError(DittoheadError):
    """The folders could not be created."""

    exit_code = 73


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "init", parents=[common], help="create the dropbox folders and missing destinations"
    )
    p.add_argument(
        "--force", action="store_true", help="also loosen modes stricter than the layout's"
    )
    p.set_defaults(handler=run)


def service_ids(config: Config) -> tuple[int, int]:
    """uid and gid of the processor's account (the caller's when not root)."""
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    try:
        entry = pwd.getpwnam(config.user)
    except KeyError:
        raise ConfigError(
            f"the user {config.user!r} does not exist; create it first "
            f"(systemd-sysusers, or: useradd --system --user-group {config.user})"
        ) from None
    return entry.pw_uid, entry.pw_gid


def layout(config: Config) -> list[Want]:
    """The dropbox folders, in creation order."""
    uid, gid = service_ids(config)
    root_ids = (0, 0) if os.geteuid() == 0 else (uid, gid)
    wants = [
        Want(config.dropbox, 0o755, *root_ids),
        Want(shared_notices_dir(config.dropbox), SHARED_NOTICES_MODE, uid, gid),
        Want(config.state_dir, 0o700, uid, gid),
    ]
    for name in config.studies:
        base = config.study_dir(name)
        wants += [Want(base / folder.name, folder.mode, uid, gid) for folder in STUDY_FOLDERS]
    return wants


def _missing_parent(path: Path) -> Path | None:
    """The topmost missing folder above `path`, if any (init makes no folder above its own)."""
    missing = None
    for parent in path.parents:
        if os.path.lexists(parent):
            break
        missing = parent
    return missing


def _apply(want: Want, force: bool, as_root: bool) -> str | None:
    try:
        st = os.lstat(want.path)
    except FileNotFoundError:
        above = _missing_parent(want.path)
        if above is not None:
            # Not made for the admin: who owns it and who may search it is theirs to decide
            # (the processor's account must be able to pass through it; see docs/admins/).
            raise InitError(
                f"cannot create {want.path}: the folder {above} above it does not exist; "
                f"create it (mkdir -p {want.path.parent}, searchable by the service account) "
                "and run init again"
            ) from None
        os.mkdir(want.path, want.mode & 0o777)
        if as_root:
            os.chown(want.path, want.uid, want.gid, follow_symlinks=False)
        os.chmod(want.path, want.mode)  # mkdir's mode is masked by the umask and drops setgid
        return f"created {want.path} ({want.mode:04o})"
    if not stat.S_ISDIR(st.st_mode):
        raise InitError(f"{want.path} exists and is not a folder; move it away and run init again")
    notes = []
    if as_root and (st.st_uid, st.st_gid) != (want.uid, want.gid):
        os.chown(want.path, want.uid, want.gid, follow_symlinks=False)
        notes.append("owner")
    have = stat.S_IMODE(st.st_mode)
    if have != want.mode:
        stricter = have & ~want.mode == 0
        if stricter and not force:
            return f"kept {want.path} at {have:04o} (stricter than {want.mode:04o}; --force)"
        os.chmod(want.path, want.mode)
        notes.append(f"mode {have:04o}→{want.mode:04o}")
    return f"fixed {want.path}: {', '.join(notes)}" if notes else None


def _destination(path: Path, uid: int, as_root: bool) -> str | None:
    if path.exists():
        return None
    parent = path.parent
    if not parent.is_dir():
        raise InitError(
            f"cannot create {path}: its parent {parent} does not exist; create it with the "
            "study runners' group (mkdir, chgrp), searchable by the service account, and run "
            "init again"
        )
    gid = parent.stat().st_gid
    os.mkdir(path, 0o750)
    if as_root:
        os.chown(path, uid, gid)
    os.chmod(path, 0o2750)  # noqa: S103 - the study group reads; setgid keeps the group
    return f"created {path} (2750, group {group_name(gid)})"


def init(config: Config, force: bool = False) -> list[str]:
    """Create or fix the layout; return what was done, in words.

    On an error, the `InitError` also says what was already done (init is idempotent: run
    again, it carries on from there).
    """
    as_root = os.geteuid() == 0
    done: list[str] = []
    try:
        for want in layout(config):
            note = _apply(want, force, as_root)
            if note:
                done.append(note)
        uid, _ = service_ids(config)
        for study in config.studies.values():
            note = _destination(study.destination, uid, as_root)
            if note:
                done.append(note)
    except OSError as exc:
        raise InitError(f"cannot set up {exc.filename}: {exc.strerror}{_so_far(done)}") from None
    except InitError as exc:
        raise InitError(f"{exc.message}{_so_far(done)}") from None
    return done


def _so_far(done: list[str]) -> str:
    return f" (already done: {'; '.join(done)})" if done else " (nothing was changed)"


def run(config: Config, args: argparse.Namespace) -> int:
    for line in init(config, force=args.force) or ["everything was already in place"]:
        print(line)
    return 0
