"""What ``dittohead-receive`` needs of the configuration, read without pydantic on each upload.

The receiver starts on every upload, and importing pydantic and checking the YAML would take a
noticeable share of a small send (docs/performance.md, "Start-up"). So ``dittohead-admin check``
(and ``init``) writes, next to ``dittohead.yaml``, ``dittohead.yaml.checked``: a JSON copy of
the few settings the receiver uses (`UploadSettings`), the sha256 of the YAML it came from and
of the code that made it. The receiver uses the copy only when both hashes still match, and
only when the YAML's owner wrote it and nobody else can write it: whoever may write the copy
decides what the receiver enforces. Otherwise it checks the YAML in full, as the processor and
the admin tool always do (`dittohead.receiver.config.model`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dittohead.core.errors import ConfigError
from dittohead.receiver import fsops

if TYPE_CHECKING:
    from dittohead.receiver.config.model import Config, Limits

log = logging.getLogger(__name__)

#: the copy of ``dittohead.yaml`` is ``dittohead.yaml.checked``
CHECKED_SUFFIX = ".checked"
#: the copy is a JSON document of this ``format``
CHECKED_FORMAT = "dittohead-upload-settings-2"  # 2: sources


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadLimits:
    """The caps of the configuration's ``limits`` that the receiver enforces (all but the
    janitor's ``stale_after``); the same names and meaning as `config.Limits`."""

    max_upload_bytes: int
    max_files: int
    max_file_bytes: int
    max_concurrent_uploads: int
    stall_timeout: float
    min_free_bytes: int

    @classmethod
    def from_limits(cls, limits: Limits) -> UploadLimits:
        return cls(**limits.model_dump(exclude={"stale_after"}))


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadSettings:
    dropbox: Path
    #: the processor's socket, poked after each commit
    socket: Path
    #: each study's uploader groups
    uploaders: dict[str, tuple[str, ...]]
    limits: UploadLimits
    #: the station ids of the configuration's ``sources`` (empty: any valid id is accepted)
    sources: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Config) -> UploadSettings:
        return cls(
            dropbox=config.dropbox,
            socket=config.socket,
            uploaders={name: study.uploaders for name, study in config.studies.items()},
            limits=UploadLimits.from_limits(config.limits),
            sources=tuple(sorted(config.sources)),
        )

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["dropbox"], doc["socket"] = str(self.dropbox), str(self.socket)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> UploadSettings:
        return cls(
            dropbox=Path(doc["dropbox"]),
            socket=Path(doc["socket"]),
            uploaders={name: tuple(groups) for name, groups in doc["uploaders"].items()},
            limits=UploadLimits(**doc["limits"]),
            sources=tuple(doc["sources"]),
        )


def unknown_source(known: Collection[str], source: str) -> str | None:
    """Why `source` is refused, when ``sources`` lists stations and it is not one; else None.

    Station ids are compared exactly, as the protocol's grammar treats them (case-sensitive):
    ``Brogden-A`` is not ``brogden-a``, which would otherwise start a second history for the
    same station and re-send everything. Shared by the receiver (the honest user's early word)
    and the processor (the boundary, which quarantines what got past).
    """
    if not known or source in known:
        return None
    near = sorted(k for k in known if k.casefold() == source.casefold())
    hint = f" (ids are case-sensitive: did you mean {near[0]!r}?)" if near else ""
    return (
        f"the station id {source!r} is not one this server knows{hint}; send with the id "
        "your server's admin gave this PC (--source), or ask them to add it to 'sources' "
        "in the server's configuration"
    )


def checked_path(path: Path) -> Path:
    """Where the checked copy of the YAML file at `path` lives."""
    return path.with_name(path.name + CHECKED_SUFFIX)


def _code_sha256() -> str:
    # A change to what the copy holds or how the YAML is read (an upgrade) must not meet an
    # old copy; the config module is hashed by path so that it is not imported here.
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(Path(__file__).with_name("model.py").read_bytes())
    return digest.hexdigest()


def checked_copy(settings: UploadSettings, yaml_bytes: bytes) -> bytes:
    """The checked copy holding `settings`, made from the YAML file `yaml_bytes`."""
    doc = {
        "format": CHECKED_FORMAT,
        "yaml_sha256": hashlib.sha256(yaml_bytes).hexdigest(),
        "code_sha256": _code_sha256(),
        "settings": settings.to_json(),
    }
    return json.dumps(doc, sort_keys=True, indent=1).encode("utf-8") + b"\n"


def _read(path: Path) -> tuple[bytes, os.stat_result]:
    try:
        with open(path, "rb") as f:
            return f.read(), os.fstat(f.fileno())
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration {path}: {exc.strerror}") from None


def _use_checked_copy(
    path: Path, yaml_bytes: bytes, yaml_stat: os.stat_result
) -> UploadSettings | None:
    """The settings in the checked copy of `path` if it is trustworthy and current, else None
    (check the YAML)."""
    copy = checked_path(path)
    try:
        fd = os.open(copy, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # none written (yet): the usual case until the admin runs check
    try:
        with open(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid != yaml_stat.st_uid:
                log.debug("%s is not the YAML owner's regular file: not used", copy)
                return None
            if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                log.debug("%s may be written by others: not used", copy)
                return None
            doc = json.loads(f.read())
        if (
            doc.get("format") != CHECKED_FORMAT
            or doc.get("yaml_sha256") != hashlib.sha256(yaml_bytes).hexdigest()
            or doc.get("code_sha256") != _code_sha256()
        ):
            log.debug("%s is out of date: the YAML is checked instead", copy)
            return None
        return UploadSettings.from_json(doc["settings"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.debug("%s cannot be used (%s): the YAML is checked instead", copy, exc)
        return None


def load_settings(path: Path | str) -> UploadSettings:
    """The receiver's settings from the YAML file at `path`: from its current checked copy if
    there is one, else from the YAML checked in full; raise `ConfigError` naming file and field."""
    path = Path(path)
    data, st = _read(path)
    settings = _use_checked_copy(path, data, st)
    if settings is None:
        from dittohead.receiver.config.model import (
            parse_config_file,  # pydantic: only without a copy
        )

        settings = UploadSettings.from_config(parse_config_file(path, data))
    return settings


def check_config(path: Path | str) -> Config:
    """Read and check the YAML file at `path` in full, and write its checked copy next to it
    when this process may (it runs as the file's owner). What ``dittohead-admin`` uses."""
    from dittohead.receiver.config.model import parse_config_file

    path = Path(path)
    data, st = _read(path)
    config = parse_config_file(path, data)
    if os.geteuid() == st.st_uid:
        copy = checked_copy(UploadSettings.from_config(config), data)
        try:
            write_checked_copy(checked_path(path), copy, like=st)
        except OSError as exc:
            log.warning("could not write %s: %s", checked_path(path), exc.strerror)
    return config


def write_checked_copy(target: Path, data: bytes, *, like: os.stat_result) -> None:
    """Replace `target` with `data` atomically, readable by whoever may read the YAML file
    whose status is `like` (its group and read bits), and writable by its owner alone."""
    mode = stat.S_IMODE(like.st_mode) & 0o644 | stat.S_IWUSR
    fsops.replace_file(target, (data,), mode=mode, gid=like.st_gid)
