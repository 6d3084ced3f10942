"""``dittohead-admin check``: is this server set up the way docs/design.md says?

Read-only but for one probe: in the dropbox, each study's inbox and processing folder and each
destination, a temporary folder is made and removed again, to try the file-system primitives
there for real (`fscaps.probe`); a folder where any of them runs by its fallback gets one line
saying which (where all run natively nothing is printed: the output stays as it was on a local
file system), and one where fcntl locks or POSIX ACLs do not work is a problem. Each finding
names the path (or account, or setting) that is wrong and the command that fixes it; the exit
status is 0 only when there is nothing to report. The folder table is `init_cmd.layout`
itself, so ``init`` and ``check`` can never disagree about what is right.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import ipaddress
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dittohead.core.errors import ConfigError
from dittohead.receiver import fscaps, fsops
from dittohead.receiver.accounts import group_name, user_name
from dittohead.receiver.admin.init_cmd import layout
from dittohead.receiver.admin.sshd_cmd import uploader_groups
from dittohead.receiver.config.model import Config
from dittohead.receiver.processor.notices import notices_dir

PROTECTED_HARDLINKS = Path("/proc/sys/fs/protected_hardlinks")
SSHD_CONFIG = Path("/etc/ssh/sshd_config")
#: what the receiver's ForceCommand runs (sshd-config prints the module form)
RECEIVER_MARKERS = ("dittohead.receiver.upload.receive", "dittohead-receive")
#: where systemd looks for system units, most important first
UNIT_DIRS = tuple(
    Path(p)
    for p in (
        "/etc/systemd/system",
        "/run/systemd/system",
        "/usr/local/lib/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
    )
)
SERVICES = ("dittohead-processor.service", "dittohead-rescan.service")


@dataclass(frozen=True)
class Problem:
    """One thing that is wrong: where, what, and how to fix it."""

    where: str
    what: str
    fix: str

    def line(self) -> str:
        return f"{self.where}: {self.what} (fix: {self.fix})"


@dataclass(frozen=True)
class Probe:
    """Where `check` looks; the tests point these at their own files."""

    protected_hardlinks: Path = PROTECTED_HARDLINKS
    sshd: Path | None = None  # None: whichever sshd is installed, if any
    sshd_config: Path = SSHD_CONFIG
    unit_dirs: tuple[Path, ...] = UNIT_DIRS


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "check",
        parents=[common],
        help="check folders, owners, modes, accounts, kernel and sshd settings",
    )
    p.add_argument(
        "--sshd-config",
        type=Path,
        default=SSHD_CONFIG,
        help="the sshd configuration to evaluate (default: %(default)s)",
    )
    p.add_argument(
        "--unit-dir",
        type=Path,
        action="append",
        dest="unit_dirs",
        metavar="DIR",
        help="look for the systemd units here instead of systemd's folders (repeatable)",
    )
    p.set_defaults(handler=run)


def _mode(value: int) -> str:
    return f"{value:04o}"


def _members(gr: grp.struct_group) -> set[str]:
    """Everyone in a group: listed members and those for whom it is the primary group."""
    return set(gr.gr_mem) | {pw.pw_name for pw in pwd.getpwall() if pw.pw_gid == gr.gr_gid}


def _group(name: str) -> grp.struct_group | None:
    try:
        return grp.getgrnam(name)
    except KeyError:
        return None


def check_accounts(config: Config) -> list[Problem]:
    problems = []
    try:
        pwd.getpwnam(config.user)
    except KeyError:
        return [
            Problem(
                f"user {config.user}",
                "the processor's account does not exist",
                f"systemd-sysusers (dittohead.conf) or useradd --system --user-group {config.user}",
            )
        ]
    for name in uploader_groups(config):
        gr = _group(name)
        if gr is None:
            problems.append(
                Problem(f"group {name}", "an uploader group does not exist", f"groupadd {name}")
            )
        elif config.user in _members(gr):
            # The processor would accept its own entries and collectors could not be told
            # apart from the service: it must never be an uploader.
            problems.append(
                Problem(
                    f"user {config.user}",
                    f"the processor's account is in the uploader group {name}",
                    f"gpasswd -d {config.user} {name}",
                )
            )
    return problems


def check_layout(config: Config) -> list[Problem]:
    problems = []
    try:
        wants = layout(config)
    except ConfigError:
        return []  # the missing account is reported by check_accounts
    for want in wants:
        where = str(want.path)
        try:
            st = os.lstat(want.path)
        except FileNotFoundError:
            problems.append(Problem(where, "missing", "dittohead-admin init"))
            continue
        if not stat.S_ISDIR(st.st_mode):
            problems.append(
                Problem(where, "is not a folder", "move it away, then dittohead-admin init")
            )
            continue
        if (st.st_uid, st.st_gid) != (want.uid, want.gid):
            owner = f"{user_name(want.uid)}:{group_name(want.gid)}"
            problems.append(
                Problem(
                    where,
                    f"owned by {user_name(st.st_uid)}:{group_name(st.st_gid)}, not {owner}",
                    f"chown {owner} {where}",
                )
            )
        have = stat.S_IMODE(st.st_mode)
        if have != want.mode:
            problems.append(
                Problem(
                    where,
                    f"mode {_mode(have)}, not {_mode(want.mode)}",
                    f"chmod {_mode(want.mode)} {where}",
                )
            )
    return problems


def check_destinations(config: Config) -> list[Problem]:
    problems = []
    try:
        uid = pwd.getpwnam(config.user).pw_uid if os.geteuid() == 0 else os.geteuid()
    except KeyError:
        return []
    for name, study in config.studies.items():
        where = str(study.destination)
        try:
            st = os.lstat(study.destination)
        except FileNotFoundError:
            problems.append(
                Problem(where, f"study {name}'s destination is missing", "dittohead-admin init")
            )
            continue
        if not stat.S_ISDIR(st.st_mode):
            problems.append(Problem(where, "is not a folder", "point the study elsewhere"))
            continue
        if st.st_uid != uid:
            problems.append(
                Problem(
                    where,
                    f"owned by {user_name(st.st_uid)}, not {user_name(uid)} "
                    "(the processor cannot add to it)",
                    f"chown {user_name(uid)} {where}",
                )
            )
        mode = stat.S_IMODE(st.st_mode)
        # 2750 is the layout; the group may also write (2770) where the study team wants to,
        # but others get nothing and the setgid bit must keep the study's group on new folders.
        if not mode & stat.S_ISGID or mode & 0o007 or mode & 0o700 != 0o700:
            problems.append(Problem(where, f"mode {_mode(mode)}, not 2750", f"chmod 2750 {where}"))
    return problems


def unsearchable(paths: list[Path]) -> list[str | None]:
    """For each path, the first folder above it that this process may not search (or None).

    `os.access` asks the kernel with the real uid and groups, so ACLs and any security module
    count exactly as they will for the processor. A missing folder ends the walk: ``missing``
    is reported by the layout and destination checks.
    """
    found: list[str | None] = []
    for path in paths:
        blocked = None
        for folder in reversed(path.parents):
            if not os.access(folder, os.X_OK):
                blocked = str(folder)
                break
            if not os.path.isdir(folder):
                break
        found.append(blocked)
    return found


def _unsearchable_as(user: pwd.struct_passwd, paths: list[Path]) -> list[str | None]:
    """`unsearchable` as `user` would see it: in a child that took on its uid and groups."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its answer is what the tests check
        status = 1
        try:
            os.close(read_fd)
            os.setgroups(os.getgrouplist(user.pw_name, user.pw_gid))
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            data = json.dumps(unsearchable(paths)).encode()
            while data:
                data = data[os.write(write_fd, data) :]
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise ConfigError(f"could not take on the identity of {user.pw_name} to check its access")
    answer: list[str | None] = json.loads(b"".join(chunks))
    return answer


def check_reach(config: Config) -> list[Problem]:
    """Can the service user get to its folders? Every folder above the dropbox, the state
    folder and each destination must be searchable by it (the processor opens them by path).

    Checked as that user: its uid and all its groups (as root, in a child that switched to
    them; otherwise the caller is taken to be the service, as in `init`).
    """
    wants: list[tuple[Path, str]] = [
        (config.dropbox, "the dropbox"),
        (config.state_dir, "the processor's state folder"),
        *(
            (study.destination, f"study {name}'s destination")
            for name, study in config.studies.items()
        ),
    ]
    paths = [path for path, _ in wants]
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam(config.user)
        except KeyError:
            return []  # reported by check_accounts
        name = user.pw_name
        blocked = _unsearchable_as(user, paths) if user.pw_uid != 0 else [None] * len(paths)
    else:
        name = user_name(os.geteuid())
        blocked = unsearchable(paths)
    by_folder: dict[str, list[str]] = {}
    for (path, role), folder in zip(wants, blocked, strict=True):
        if folder is not None:
            by_folder.setdefault(folder, []).append(f"{role} {path}")
    problems = []
    for folder, roles in by_folder.items():
        try:
            st = os.stat(folder)
            how = (
                f"mode {_mode(stat.S_IMODE(st.st_mode))}, "
                f"{user_name(st.st_uid)}:{group_name(st.st_gid)}"
            )
        except OSError:
            how = "not searchable"
        problems.append(
            Problem(
                folder,
                f"{name} may not pass through this folder ({how}), so the processor cannot "
                f"reach {' or '.join(roles)}",
                f"setfacl -m u:{name}:x {folder} (search only, for {name} alone), "
                f"or chmod o+x {folder}",
            )
        )
    return problems


def check_kernel(probe: Probe) -> list[Problem]:
    try:
        value = probe.protected_hardlinks.read_text().strip()
    except OSError:
        return []  # not Linux /proc
    if value == "1":
        return []
    return [
        Problem(
            "fs.protected_hardlinks",
            f"is {value}: collectors could hard-link files they do not own into uploads",
            "sysctl -w fs.protected_hardlinks=1 and set it in /etc/sysctl.d/",
        )
    ]


def check_socket(config: Config) -> list[Problem]:
    where = str(config.socket)
    fix_unit = (
        "systemctl enable --now dittohead-processor.socket (its ListenStream= must be this path)"
    )
    try:
        st = os.stat(config.socket)
    except FileNotFoundError:
        # Expected until the socket unit is enabled, which is the step after init: say so
        # rather than leave the admin wondering what is wrong.
        return [
            Problem(
                where,
                "no processor socket here (the socket unit is not enabled yet, or listens "
                "elsewhere)",
                fix_unit,
            )
        ]
    if not stat.S_ISSOCK(st.st_mode):
        return [Problem(where, "is not a socket", f"remove it, then {fix_unit}")]
    problems = []
    if stat.S_IMODE(st.st_mode) & 0o007:
        problems.append(
            Problem(
                where,
                f"mode {_mode(stat.S_IMODE(st.st_mode))}: anyone may poke the processor",
                "SocketMode=0660 in dittohead-processor.socket",
            )
        )
    # Every uploader must be able to poke, or their uploads wait for the timer.
    try:
        sock_group = grp.getgrgid(st.st_gid)
    except KeyError:
        return problems
    may_poke = _members(sock_group)
    for name in uploader_groups(config):
        gr = _group(name)
        if gr is None:
            continue
        for member in sorted(_members(gr) - may_poke):
            problems.append(
                Problem(
                    where,
                    f"collector {member} (group {name}) cannot poke the processor",
                    f"usermod -aG {sock_group.gr_name} {member}",
                )
            )
    return problems


def _sshd(probe: Probe) -> Path | None:
    if probe.sshd is not None:
        return probe.sshd if probe.sshd.exists() else None
    found = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    return Path(found) if found else None


def check_sshd(config: Config, probe: Probe) -> list[Problem]:
    sshd = _sshd(probe)
    if sshd is None:
        return []  # sshd lives elsewhere (a bastion); nothing to evaluate here
    problems = []
    for name in uploader_groups(config):
        gr = _group(name)
        members = sorted(_members(gr)) if gr is not None else []
        if not members:
            continue
        member = members[0]
        spec = f"user={member},host=localhost,addr=127.0.0.1"
        where = f"{probe.sshd_config} (for {member}, group {name})"
        result = subprocess.run(
            [str(sshd), "-T", "-f", str(probe.sshd_config), "-C", spec],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            problems.append(
                Problem(
                    where,
                    f"sshd -T failed: {result.stderr.strip() or result.returncode}",
                    "sshd -t, and run check as root",
                )
            )
            continue
        problems += _judge_sshd(where, _parse_sshd(result.stdout))
    return problems


def _parse_sshd(text: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key.lower(), value.strip())
    return settings


def _judge_sshd(where: str, settings: dict[str, str]) -> list[Problem]:
    fix = "add the block printed by 'dittohead-admin sshd-config', then reload sshd"
    problems = []
    command = settings.get("forcecommand", "none")
    if not any(marker in command for marker in RECEIVER_MARKERS):
        problems.append(
            Problem(where, f"ForceCommand is {command!r}, not the dittohead receiver", fix)
        )
    forwarding = ("allowtcpforwarding", "allowagentforwarding", "allowstreamlocalforwarding")
    if settings.get("disableforwarding") != "yes" and (
        settings.get("x11forwarding") != "no"
        or any(settings.get(key) != "no" for key in forwarding)
    ):
        problems.append(Problem(where, "forwarding is allowed (DisableForwarding is not yes)", fix))
    if settings.get("permittty") != "no":
        problems.append(Problem(where, "collectors may get a terminal (PermitTTY yes)", fix))
    if settings.get("permituserrc") != "no":
        problems.append(Problem(where, "~/.ssh/rc runs at login (PermitUserRC yes)", fix))
    return problems


def _unit_files(unit: str, dirs: tuple[Path, ...]) -> list[Path]:
    """The unit file and its drop-ins in the order systemd applies them (empty: not installed).

    Drop-ins come from ``<unit>.d/`` and the dash-prefix ``dittohead-.service.d/``; a file name
    in a more important folder hides the same name further down.
    """
    main = next((d / unit for d in dirs if (d / unit).is_file()), None)
    if main is None:
        return []
    prefix = unit.split("-", 1)[0] + "-.service.d"
    drop_ins: dict[str, Path] = {}
    for d in reversed(dirs):
        for sub in (prefix, unit + ".d"):
            folder = d / sub
            if folder.is_dir():
                for conf in folder.glob("*.conf"):
                    drop_ins[conf.name] = conf
    return [main, *(drop_ins[name] for name in sorted(drop_ins))]


def _read_write_paths(files: list[Path]) -> list[Path]:
    """The folders ``ReadWritePaths=`` lets the service write (a ``-``/``+`` prefix dropped)."""
    return [Path(v.lstrip("-+")) for v in _service_values(files, "ReadWritePaths")]


def check_units(config: Config, probe: Probe) -> list[Problem]:
    """ProtectSystem=strict: every folder the processor writes must be in ReadWritePaths=.

    One finding per folder (naming each service that lacks it), whose fix is a drop-in in the
    most important of the unit folders looked at (``--unit-dir`` when given).
    """
    needed = [
        config.dropbox,
        config.state_dir,
        *(study.destination for study in config.studies.values()),
    ]
    lacking: dict[Path, list[str]] = {}
    for unit in SERVICES:
        files = _unit_files(unit, probe.unit_dirs)
        if not files:
            continue  # not installed as a systemd service here
        writable = _read_write_paths(files)
        for path in needed:
            if not any(path == w or w in path.parents for w in writable):
                lacking.setdefault(path, []).append(unit)
    drop_in = probe.unit_dirs[0] / "dittohead-.service.d" / "destinations.conf"
    return [
        Problem(
            str(path),
            f"{' and '.join(units)} may not write here (not in ReadWritePaths=)",
            f"add 'ReadWritePaths={path}' under [Service] in {drop_in}, then "
            "systemctl daemon-reload",
        )
        for path, units in lacking.items()
    ]


# -- mail (dittohead-notify; docs/admins/notify.md) -------------------------------------------

NOTIFY_SERVICE = "dittohead-notify.service"
RELAY_DROP_IN = "/etc/systemd/system/dittohead-notify.service.d/relay.conf"


def _service_values(files: list[Path], key: str) -> list[str]:
    """Every value of `key` under [Service] in `files`, in systemd's order (an empty
    assignment resets the list)."""
    values: list[str] = []
    for file in files:
        section = ""
        for raw in file.read_text(encoding="utf-8", errors="replace").splitlines():
            line = raw.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and line.startswith(f"{key}="):
                words = line.split("=", 1)[1].split()
                if not words:
                    values = []
                values += words
    return values


def _allowed(address: str, allow: list[str]) -> bool:
    ip = ipaddress.ip_address(address)
    for value in allow:
        if value == "any" or (value == "localhost" and ip.is_loopback):
            return True
        if value == "link-local" and ip.is_link_local:
            return True
        with contextlib.suppress(ValueError):
            if ip in ipaddress.ip_network(value, strict=False):
                return True
    return False


def _relay_addresses(host: str, port: int) -> list[str] | None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    return sorted({str(info[4][0]) for info in infos})


def check_mail(config: Config, probe: Probe) -> list[Problem]:
    """The mail settings, the password file, and what the notify unit lets through."""
    mail = config.mail
    if mail is None:
        return []
    problems = []
    for name, study in config.studies.items():
        for address in study.notify:
            if "@" not in address or any(c.isspace() for c in address):
                problems.append(
                    Problem(
                        f"studies.{name}.notify",
                        f"{address!r} is not a mail address",
                        "write it as name@example.org",
                    )
                )
    addresses = _relay_addresses(mail.host, mail.port)
    if addresses is None:
        problems.append(
            Problem(
                f"mail.relay {mail.relay}",
                f"{mail.host} cannot be resolved",
                "give the relay as an address, or a name in /etc/hosts",
            )
        )
    if mail.password_file is not None:
        where = str(mail.password_file)
        try:
            st = os.stat(mail.password_file)
        except FileNotFoundError:
            problems.append(
                Problem(
                    where,
                    "the relay password file is missing",
                    f"write the password into it, then chown root:root {where}; chmod 0600 {where}",
                )
            )
        else:
            if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
                problems.append(
                    Problem(
                        where,
                        f"owned by {user_name(st.st_uid)} with mode "
                        f"{_mode(stat.S_IMODE(st.st_mode))}: the relay password must be "
                        "readable by root alone (systemd hands it to the service)",
                        f"chown root:root {where}; chmod 0600 {where}",
                    )
                )
    files = _unit_files(NOTIFY_SERVICE, probe.unit_dirs)
    if not files:
        if _unit_files(SERVICES[0], probe.unit_dirs):
            problems.append(
                Problem(
                    NOTIFY_SERVICE,
                    "not installed, so the queued notices are never mailed",
                    "install it from the package, then systemctl enable --now "
                    "dittohead-notify.path dittohead-notify.timer",
                )
            )
        return problems
    writable = _read_write_paths(files)
    state = notices_dir(config.state_dir)
    if not any(state == w or w in state.parents for w in writable):
        problems.append(
            Problem(
                str(state),
                f"{NOTIFY_SERVICE} may not write here (not in its ReadWritePaths=)",
                f"add 'ReadWritePaths={state}' under [Service] in {RELAY_DROP_IN}, then "
                "systemctl daemon-reload",
            )
        )
    allow = _service_values(files, "IPAddressAllow")
    for address in addresses or []:
        if not _allowed(address, allow):
            problems.append(
                Problem(
                    f"mail.relay {mail.relay}",
                    f"{NOTIFY_SERVICE} may not connect to {address} (not in IPAddressAllow=)",
                    f"add 'IPAddressAllow={address}' under [Service] in {RELAY_DROP_IN}, then "
                    "systemctl daemon-reload",
                )
            )
    if mail.password_file is not None:
        wanted = f"smtp-password:{mail.password_file}"
        if wanted not in _service_values(files, "LoadCredential"):
            problems.append(
                Problem(
                    NOTIFY_SERVICE,
                    "does not hand over the relay password",
                    f"add 'LoadCredential={wanted}' under [Service] in {RELAY_DROP_IN}, then "
                    "systemctl daemon-reload",
                )
            )
    return problems


def _probe_folders(config: Config) -> list[Path]:
    folders = [config.dropbox]
    for name in config.studies:
        folders += [config.study_dir(name) / "inbox", config.study_dir(name) / "processing"]
    folders += [study.destination for study in config.studies.values()]
    return folders


def check_filesystems(config: Config, lines: list[str]) -> list[Problem]:
    """Try the file-system primitives in each folder the receiver and processor write to; a
    line into `lines` for each folder where a fallback is used; a problem where fcntl locks do
    not work (several hosts sharing the folder would then not serialize their ledger appends)
    or the dropbox refuses POSIX ACLs."""
    problems = []
    for folder in _probe_folders(config):
        try:
            fd = os.open(folder, fsops.DIR_FLAGS)
        except OSError:
            continue  # missing or not a folder: check_layout / check_destinations say so
        try:
            found = fscaps.probe(fd)
        except OSError as exc:
            problems.append(
                Problem(
                    str(folder),
                    f"cannot try the file-system primitives here ({exc.strerror})",
                    "make the folder writable again (a read-only or full file system?)",
                )
            )
            continue
        finally:
            os.close(fd)
        if not all(found.modes.values()):
            described = " ".join(fscaps.describe(found))
            lines.append(f"file system: {folder} ({found.fstype}): {described}")
        if not found.acls and folder == config.dropbox:
            problems.append(
                Problem(
                    str(folder),
                    f"this {found.fstype} file system refuses POSIX ACLs, which the processor "
                    "sets on each uploader's outcomes/ folder",
                    "mount it with ACLs on (GlusterFS: -o acl; docs/admins/scale-out.md)",
                )
            )
        if not found.locks:
            problems.append(
                Problem(
                    str(folder),
                    f"fcntl locks do not work on this {found.fstype} file system",
                    "mount it with locking (NFS: without nolock or local_lock), or run one "
                    "host only (docs/admins/scale-out.md)",
                )
            )
    return problems


def check(
    config: Config, probe: Probe | None = None, lines: list[str] | None = None
) -> list[Problem]:
    """Everything that is wrong with this deployment (empty: all is well). The file-system
    lines (`check_filesystems`) go into `lines` where given."""
    probe = probe or Probe()
    return [
        *check_filesystems(config, [] if lines is None else lines),
        *check_accounts(config),
        *check_layout(config),
        *check_destinations(config),
        *check_reach(config),
        *check_kernel(probe),
        *check_socket(config),
        *check_units(config, probe),
        *check_sshd(config, probe),
        *check_mail(config, probe),
    ]


def run(config: Config, args: argparse.Namespace) -> int:
    probe = Probe(
        sshd_config=args.sshd_config,
        unit_dirs=tuple(args.unit_dirs) if args.unit_dirs else UNIT_DIRS,
    )
    lines: list[str] = []
    problems = check(config, probe, lines)
    for line in lines:
        print(line)
    for problem in problems:
        print(problem.line())
    if problems:
        print(f"{len(problems)} problem(s) found")
        return 1
    # Without a file-system line every folder probed uses the native primitives; say so, in
    # the one line a good deployment gets.
    native = "" if lines else "; every file system offers the native primitives and fcntl locks"
    print(
        "ok: folders, owners, modes, accounts, kernel, socket, sshd and mail settings are "
        f"right{native}"
    )
    return 0
