"""Presets: the collector's ``client.toml``, so that a send is a name instead of ten options.

The files are looked up as docs/collectors/README.md describes (DESIGN's "The collector's
side"): ``--config FILE``; else ``$DITTOHEAD_CONFIG``; else the per-user file laid over the
machine-wide one an admin deploys to lab PCs. Each of the first two is read alone; in the last
case every value the per-user file gives wins, key by key: its ``[server]`` keys over the
machine's, and a ``[[preset]]`` of the same name key by key over the machine's preset (so a
per-user file may hold no more than ``name`` and ``user`` for a preset the admin defined; that
is where dittohead remembers a login, `remember_login`).

Parsing is pure (`parse`, `merge`) and strict: a key dittohead does not know, a value of the
wrong type, a preset name given twice in one file, or a preset without a study is one
`ConfigError` line naming the file and the key. A preset's folder that does not exist on this
PC is reported when the preset is used (`Preset.checked_folder`), not when the list is read:
one machine-wide file serves PCs that hold different studies. Never a password: there is no
key for one.

Standard library only (`tomllib`): the client must run on Windows without extra packages.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from dittohead.client.plan.state import write_atomic
from dittohead.core.errors import ConfigError, ProtocolError
from dittohead.core.grammar import check_source, check_study

FILE_NAME = "client.toml"
ENV_VAR = "DITTOHEAD_CONFIG"

#: a preset's name: what a collector types or picks; printable, no quotes or slashes
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]{0,63}")
_SERVER_KEYS = frozenset({"host", "port", "known_hosts", "station"})
_PRESET_KEYS = frozenset({"name", "study", "folder", "things", "user", "identity"})
_TOP_KEYS = frozenset({"server", "preset"})


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """``[server]``: where this PC sends, and as which station."""

    host: str | None = None
    port: int | None = None
    known_hosts: str | None = None
    station: str | None = None


@dataclass(frozen=True, slots=True)
class Preset:
    """One ``[[preset]]``, with the file that defined it (for the messages)."""

    name: str
    file: str
    study: str | None = None
    folder: str | None = None
    things: tuple[str, ...] = ()
    user: str | None = None
    identity: str | None = None

    def checked_folder(self) -> str:
        """The folder, which must exist now (on this PC); else a `ConfigError`."""
        if self.folder is None:
            raise _error(self.file, f"preset {self.name!r} has no 'folder'", 'add folder = "…"')
        if not os.path.isdir(self.folder):
            raise _error(
                self.file,
                f"preset {self.name!r}: its 'folder' {self.folder} does not exist on this PC",
                "fix the folder or pick another preset",
            )
        return self.folder


@dataclass(frozen=True, slots=True)
class FileContent:
    """What one file says, checked but not merged."""

    file: str
    server: ServerSettings
    presets: tuple[Preset, ...]


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """The settings in force: the files read (in order of precedence) merged into one."""

    files: tuple[str, ...]
    server: ServerSettings
    presets: tuple[Preset, ...]
    #: where a remembered login goes (None: --config or $DITTOHEAD_CONFIG chose the file)
    user_file: str | None = None

    def preset(self, name: str) -> Preset:
        for preset in self.presets:
            if preset.name == name:
                return preset
        where = " or ".join(self.files) if self.files else "no client.toml was found"
        known = ", ".join(repr(p.name) for p in self.presets) or "none"
        raise ConfigError(
            f"there is no preset {name!r} (read: {where}; presets: {known}); "
            "see 'dittohead presets'"
        )


def _error(file: str, what: str, todo: str) -> ConfigError:
    return ConfigError(f"{file}: {what}; {todo}")


# -- where the files are ----------------------------------------------------------------------


def user_file() -> str:
    """The per-user file (which need not exist)."""
    join = os.path.join
    if os.name == "nt":
        base = os.environ.get("APPDATA") or join(os.path.expanduser("~"), "AppData", "Roaming")
        return join(base, "dittohead", FILE_NAME)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return join(xdg, "dittohead", FILE_NAME)
    return join(os.path.expanduser("~"), ".config", "dittohead", FILE_NAME)


def machine_file() -> str:
    """The machine-wide file an admin deploys (which need not exist)."""
    if os.name == "nt":
        base = os.environ.get("PROGRAMDATA") or r"C:\ProgramData"
        return os.path.join(base, "dittohead", FILE_NAME)
    return "/etc/dittohead/client.toml"


def load(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> ClientConfig:
    """The settings in force (empty when no file exists and none was named)."""
    env = os.environ if environ is None else environ
    named = explicit or env.get(ENV_VAR) or None
    if named is not None:
        content = read_file(named, must_exist=True)
        assert content is not None
        return merge([content])
    mine, machine = user_file(), machine_file()
    found = [c for c in (read_file(mine), read_file(machine)) if c is not None]
    return replace(merge(found), user_file=mine)


def read_file(path: str, *, must_exist: bool = False) -> FileContent | None:
    """One file checked (None when it does not exist and need not)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(
                f"the client configuration {path} does not exist; check --config or ${ENV_VAR}"
            ) from None
        return None
    except OSError as exc:
        raise ConfigError(
            f"cannot read the client configuration {path} ({exc.strerror}); ask your admin"
        ) from None
    return parse(data, path)


# -- checking one file (pure) -----------------------------------------------------------------


def parse(data: bytes, file: str) -> FileContent:
    """Check one file's bytes; `file` names it in the messages and anchors relative paths."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise _error(file, "is not UTF-8 text", "save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise _error(file, f"is not valid TOML ({exc})", "fix that line") from None
    _only(file, doc, _TOP_KEYS, "")
    server = _server(file, doc.get("server", {}))
    presets_doc = doc.get("preset", [])
    if not isinstance(presets_doc, list):
        raise _error(file, "'preset' must be a list of [[preset]] tables", "write [[preset]]")
    presets: list[Preset] = []
    seen: set[str] = set()
    for number, table in enumerate(presets_doc, 1):
        preset = _preset(file, number, table)
        if preset.name in seen:
            raise _error(
                file,
                f"the preset name {preset.name!r} is given twice (key 'name')",
                "give each [[preset]] its own name",
            )
        seen.add(preset.name)
        presets.append(preset)
    return FileContent(file, server, tuple(presets))


def _only(file: str, table: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise _error(file, f"{where}unknown key {key!r}", f"the known keys are {known}")


def _text(file: str, where: str, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _error(file, f"{where}'{key}' must be a non-empty text in quotes", "fix it")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _error(file, f"{where}'{key}' holds a control character", "fix it")
    return value


def _path(file: str, where: str, key: str, value: object) -> str:
    text = os.path.expanduser(_text(file, where, key, value))
    # A relative path means: beside this file (as an admin who ships both would expect).
    return text if os.path.isabs(text) else os.path.join(os.path.dirname(file), text)


def _server(file: str, table: object) -> ServerSettings:
    where = "[server] "
    if not isinstance(table, dict):
        raise _error(file, "'server' must be a [server] table", "write [server]")
    _only(file, table, _SERVER_KEYS, where)
    port = table.get("port")
    if port is not None and (type(port) is not int or not 1 <= port <= 65535):
        raise _error(file, f"{where}'port' must be a number from 1 to 65535", "fix it")
    station = table.get("station")
    if station is not None:
        station = _text(file, where, "station", station)
        try:
            check_source(station)
        except ProtocolError as exc:
            raise _error(file, f"{where}'station': {exc.message}", "fix it") from None
    host = table.get("host")
    known = table.get("known_hosts")
    return ServerSettings(
        host=None if host is None else _text(file, where, "host", host),
        port=port,
        known_hosts=None if known is None else _path(file, where, "known_hosts", known),
        station=station,
    )


def _preset(file: str, number: int, table: object) -> Preset:
    if not isinstance(table, dict):
        raise _error(file, f"preset number {number} is not a table", "write [[preset]]")
    if "name" not in table:
        raise _error(file, f"preset number {number} has no 'name'", 'add name = "…"')
    name = _text(file, f"preset number {number}: ", "name", table["name"])
    if not NAME_RE.fullmatch(name):
        raise _error(
            file,
            f"preset number {number}: the name {name!r} is not allowed (key 'name')",
            "use letters, digits, spaces, '.', '_', '+', '-' (at most 64)",
        )
    where = f"preset {name!r}: "
    _only(file, table, _PRESET_KEYS, where)
    study = table.get("study")
    if study is not None:
        try:
            check_study(_text(file, where, "study", study))
        except ProtocolError as exc:
            raise _error(file, f"{where}'study': {exc.message}", "fix it") from None
    things = table.get("things", [])
    if not isinstance(things, list):
        raise _error(file, f"{where}'things' must be a list such as [\"eprime\"]", "fix it")
    return Preset(
        name=name,
        file=file,
        study=study,
        folder=None if "folder" not in table else _path(file, where, "folder", table["folder"]),
        things=tuple(_text(file, where, "things", t) for t in things),
        user=None if "user" not in table else _text(file, where, "user", table["user"]),
        identity=None
        if "identity" not in table
        else _path(file, where, "identity", table["identity"]),
    )


def merge(contents: list[FileContent]) -> ClientConfig:
    """Lay the files over each other, the first winning key by key; every preset then needs a
    study (named in the file that defined the preset first, where it was meant to be)."""
    server: dict[str, object] = {}
    presets: dict[str, Preset] = {}
    for content in reversed(contents):  # the last (machine-wide) first, then overwritten
        for key in _SERVER_KEYS:
            value = getattr(content.server, key)
            if value is not None:
                server[key] = value
        for preset in content.presets:
            base = presets.get(preset.name)
            presets[preset.name] = preset if base is None else _over(base, preset)
    for preset in presets.values():
        if preset.study is None:
            raise _error(
                preset.file,
                f"preset {preset.name!r} has no 'study'",
                'add study = "…" (the study the data belongs to)',
            )
    return ClientConfig(
        files=tuple(c.file for c in contents),
        server=ServerSettings(**server),  # type: ignore[arg-type]
        presets=tuple(presets.values()),
    )


def _over(base: Preset, top: Preset) -> Preset:
    """`top`'s values where it gives them, else `base`'s (messages name `base`'s file)."""
    return Preset(
        name=base.name,
        file=base.file,
        study=top.study or base.study,
        folder=top.folder or base.folder,
        things=top.things or base.things,
        user=top.user or base.user,
        identity=top.identity or base.identity,
    )


# -- remembering a login ----------------------------------------------------------------------


def remember_login(path: str, preset: str, user: str) -> bool:
    """Set ``user`` of `preset` in the per-user file at `path` (creating either); False when
    it already said so. The file is rewritten whole (atomically), so comments in it are lost:
    it is dittohead's, the admin's presets live in the machine-wide file."""
    content = read_file(path)
    doc: dict[str, Any] = {}
    if content is not None:
        with open(path, "rb") as f:
            doc = tomllib.loads(f.read().decode("utf-8"))
    tables: list[dict[str, Any]] = doc.setdefault("preset", [])
    for table in tables:
        if table.get("name") == preset:
            if table.get("user") == user:
                return False
            table["user"] = user
            break
    else:
        tables.append({"name": preset, "user": user})
    write_atomic(path, dumps(doc).encode("utf-8"))
    return True


def save_preset(path: str, fields: Mapping[str, Any], *, replacing: str | None = None) -> None:
    """Write one preset into the per-user file at `path` (the window's editor): the table named
    `replacing` (else the one named ``fields["name"]``) is replaced by `fields`, or `fields` is
    added. The result is checked as `parse` would check it before it is written (atomically),
    so a wrong value is a `ConfigError` and the file stays as it was; ``[server]`` and the
    other presets are kept. Never the machine-wide file: the admin's presets are laid under
    this one key by key (`merge`), so a preset of the same name here overrides theirs."""
    content = read_file(path)
    doc: dict[str, Any] = {}
    if content is not None:
        with open(path, "rb") as f:
            doc = tomllib.loads(f.read().decode("utf-8"))
    table = {k: v for k, v in fields.items() if v not in (None, "", [], ())}
    if isinstance(table.get("things"), tuple):
        table["things"] = list(table["things"])
    tables: list[dict[str, Any]] = doc.setdefault("preset", [])
    old = replacing if replacing is not None else table.get("name")
    for number, existing in enumerate(tables):
        if existing.get("name") == old:
            tables[number] = table
            break
    else:
        tables.append(table)
    text = dumps(doc)
    parse(text.encode("utf-8"), path)  # a ConfigError names the key; nothing is written
    write_atomic(path, text.encode("utf-8"))


def dumps(doc: Mapping[str, Any]) -> str:
    """TOML text for the documents this module reads (texts, numbers, lists of texts, the
    ``[server]`` table and ``[[preset]]`` tables)."""
    lines: list[str] = []
    server = doc.get("server")
    if isinstance(server, Mapping):
        lines.append("[server]")
        lines += [f"{k} = {_value(v)}" for k, v in server.items()]
        lines.append("")
    for table in doc.get("preset", []):
        lines.append("[[preset]]")
        lines += [f"{k} = {_value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # A TOML basic string: escape what it must (JSON's escapes are TOML's for these).
        out = value.replace("\\", "\\\\").replace('"', '\\"')
        return (
            '"'
            + "".join(c if ord(c) >= 32 and c != "\x7f" else f"\\u{ord(c):04x}" for c in out)
            + '"'
        )
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
