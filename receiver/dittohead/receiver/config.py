"""The server's one YAML configuration file, as plain value classes checked by pydantic.

Unknown keys are errors, and every error names the file and the field, so that an admin who
mistypes ``uploaders`` hears about it at once instead of wondering why nobody may upload.

The receiver starts on every upload, so what it loads counts. pydantic is imported only to
check a YAML file: its import and schema building (~0.09 s here) were once most of the
receiver's start-up. When the admin runs ``dittohead-admin check`` (or ``init``), the checked
result is written next to the YAML as ``<name>.checked`` (JSON): it names the sha256 of the YAML
it came from and of this module, and it is used only when both still match and it belongs to
the YAML's owner and nobody else can write it. Otherwise the YAML is checked again, as before.

The classes are `Value`s, not dataclasses: `dataclasses` (with `inspect`) and `typing` cost the
receiver's start ~6 ms more. Each names what pydantic checks of its fields in ``_SCHEMA``;
`_checked_class` makes the dataclass pydantic validates a YAML mapping against from that, the
class's ``__init__`` defaults and its ``_check``, only when a file is checked (`Section`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

from dittohead.core import logs
from dittohead.core.errors import ConfigError
from dittohead.core.grammar import SOURCE_RE, STUDY_RE
from dittohead.core.values import Value
from dittohead.receiver import fsops

TYPE_CHECKING = False  # as typing's (mypy reads it so), without importing typing on each upload
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar, Final, TypeAlias

log = logs.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/dittohead/dittohead.yaml")

#: the checked copy of ``dittohead.yaml`` is ``dittohead.yaml.checked``
CHECKED_SUFFIX = ".checked"
#: what a checked copy starts with (a JSON document of this ``format``)
CHECKED_FORMAT = "dittohead-config-checked-1"

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def _parse_size(value: Any) -> Any:
    """Accept ``1073741824``, ``"1 GiB"`` or ``"500MB"`` for byte counts."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if match is None or match[2].lower() not in _UNITS:
            raise ValueError(f"{value!r} is not a size such as 500MB or 2GiB")
        return int(float(match[1]) * _UNITS[match[2].lower()])
    return value


def _absolute(value: Path) -> Path:
    if not value.is_absolute():
        raise ValueError("must be an absolute path")
    return value


def _study_names(value: dict[str, Any]) -> dict[str, Any]:
    for name in value:
        if not STUDY_RE.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a valid study name (lower-case letters, digits, '-', '_')"
            )
    return value


def _source_ids(value: dict[str, str]) -> dict[str, str]:
    for name in value:
        if not SOURCE_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid station id")
    return value


class Rule(Value):
    """What pydantic checks for one field besides its type (see `Schema`).

    pydantic reads it as ``Annotated`` metadata through ``__get_pydantic_core_schema__`` (its
    protocol for types it does not know), so this module needs pydantic only when a file is
    checked.
    """

    __slots__ = _FIELDS = ("before", "after", "ge", "gt", "min_length")

    before: Final[Callable[[Any], Any] | None]
    after: Final[Callable[[Any], Any] | None]
    ge: Final[float | None]
    gt: Final[float | None]
    min_length: Final[int | None]

    def __init__(
        self,
        *,
        before: Callable[[Any], Any] | None = None,
        after: Callable[[Any], Any] | None = None,
        ge: float | None = None,
        gt: float | None = None,
        min_length: int | None = None,
    ) -> None:
        self.before = before
        self.after = after
        self.ge = ge
        self.gt = gt
        self.min_length = min_length

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from typing import Annotated  # noqa: PLC0415 (only when checking)

        from pydantic import Field  # noqa: PLC0415 (only when checking)
        from pydantic_core import core_schema  # noqa: PLC0415 (only when checking)

        bounds = Field(ge=self.ge, gt=self.gt, min_length=self.min_length)
        schema = handler(Annotated[source, bounds])
        if self.after is not None:
            schema = core_schema.no_info_after_validator_function(self.after, schema)
        if self.before is not None:
            schema = core_schema.no_info_before_validator_function(self.before, schema)
        return schema


SIZE = Rule(before=_parse_size, ge=0)
ABSOLUTE = Rule(after=_absolute)

if TYPE_CHECKING:
    Schema: TypeAlias = dict[str, tuple[Any, Rule | None]]


class Section(Value):
    """A part of the configuration that pydantic checks when a YAML file is checked
    (`_checked_class` makes the dataclass it checks against)."""

    __slots__ = ()

    #: each field's type as pydantic checks it, and its `Rule` (None: the type alone)
    _SCHEMA: ClassVar[Schema]

    @staticmethod
    def _check(section: Any) -> None:
        """What no one field's rule can say: raise ValueError. Run by ``__init__``, and on
        what pydantic made from a YAML file (so its words are pydantic's "Value error, …")."""


class Limits(Section):
    """Caps on what one upload may bring (the receiver enforces; the processor re-checks)."""

    __slots__ = _FIELDS = (
        "max_upload_bytes",
        "max_files",
        "max_file_bytes",
        "max_concurrent_uploads",
        "stall_timeout",
        "min_free_bytes",
        "stale_after",
    )
    _SCHEMA: ClassVar[Schema] = {
        "max_upload_bytes": (int, SIZE),
        "max_files": (int, Rule(ge=1)),
        "max_file_bytes": (int, SIZE),
        "max_concurrent_uploads": (int, Rule(ge=1)),
        "stall_timeout": (float, Rule(gt=0)),
        "min_free_bytes": (int, SIZE),
        "stale_after": (float, Rule(gt=0)),
    }

    max_upload_bytes: Final[int]
    max_files: Final[int]
    max_file_bytes: Final[int]
    max_concurrent_uploads: Final[int]
    #: seconds without a byte from the client before the receiver gives up
    stall_timeout: Final[float]
    #: keep this much free on the inbox's file system; refuse uploads that would eat it
    min_free_bytes: Final[int]
    #: seconds a staging entry may sit without any change before the janitor moves it aside
    stale_after: Final[float]

    def __init__(
        self,
        *,
        max_upload_bytes: int = 1024**4,
        max_files: int = 1_000_000,
        max_file_bytes: int = 256 * 1024**3,
        max_concurrent_uploads: int = 4,
        stall_timeout: float = 300.0,
        min_free_bytes: int = 1024**3,
        stale_after: float = 86400.0,
    ) -> None:
        self.max_upload_bytes = max_upload_bytes
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes
        self.max_concurrent_uploads = max_concurrent_uploads
        self.stall_timeout = stall_timeout
        self.min_free_bytes = min_free_bytes
        self.stale_after = stale_after
        self._check(self)

    @staticmethod
    def _check(limits: Any) -> None:
        # A live upload is cut off by the receiver after stall_timeout of silence; only then
        # may the janitor call its staging entry abandoned.
        if limits.stale_after <= 2 * limits.stall_timeout:
            raise ValueError("stale_after must be more than twice stall_timeout")


class Study(Section):
    __slots__ = _FIELDS = ("destination", "uploaders", "notify")
    _SCHEMA: ClassVar[Schema] = {
        "destination": (Path, ABSOLUTE),
        "uploaders": (tuple[str, ...], Rule(min_length=1)),
        "notify": (tuple[str, ...], None),
    }

    destination: Final[Path]
    uploaders: Final[tuple[str, ...]]
    #: people told by mail about this study's uploads (used by the notifier)
    notify: Final[tuple[str, ...]]

    def __init__(
        self, *, destination: Path, uploaders: tuple[str, ...], notify: tuple[str, ...] = ()
    ) -> None:
        self.destination = destination
        self.uploaders = uploaders
        self.notify = notify


class ProcessorSettings(Section):
    __slots__ = _FIELDS = ("idle_timeout",)
    _SCHEMA: ClassVar[Schema] = {"idle_timeout": (float, Rule(gt=0))}

    #: seconds the socket-activated processor waits for more work before it exits
    idle_timeout: Final[float]

    def __init__(self, *, idle_timeout: float = 60.0) -> None:
        self.idle_timeout = idle_timeout


class Config(Section):
    __slots__ = _FIELDS = (
        "dropbox",
        "socket",
        "state_dir",
        "user",
        "sources",
        "studies",
        "limits",
        "processor",
    )
    _SCHEMA: ClassVar[Schema] = {
        "dropbox": (Path, ABSOLUTE),
        "socket": (Path, ABSOLUTE),
        "state_dir": (Path, ABSOLUTE),
        "user": (str, None),
        "sources": (dict[str, str], Rule(after=_source_ids)),
        "studies": (dict[str, Study], Rule(after=_study_names)),
        "limits": (Limits, None),
        "processor": (ProcessorSettings, None),
    }

    dropbox: Final[Path]
    socket: Final[Path]
    state_dir: Final[Path]
    #: the account the processor runs as, owner of everything it stores
    user: Final[str]
    sources: Final[dict[str, str]]
    studies: Final[dict[str, Study]]
    limits: Final[Limits]
    processor: Final[ProcessorSettings]

    def __init__(
        self,
        *,
        dropbox: Path,
        socket: Path = Path("/run/dittohead/processor.sock"),
        state_dir: Path = Path("/var/lib/dittohead"),
        user: str = "dittohead",
        sources: dict[str, str] | None = None,
        studies: dict[str, Study] | None = None,
        limits: Limits | None = None,
        processor: ProcessorSettings | None = None,
    ) -> None:
        self.dropbox = dropbox
        self.socket = socket
        self.state_dir = state_dir
        self.user = user
        self.sources = {} if sources is None else sources
        self.studies = {} if studies is None else studies
        self.limits = Limits() if limits is None else limits
        self.processor = ProcessorSettings() if processor is None else processor

    def study(self, name: str) -> Study:
        try:
            return self.studies[name]
        except KeyError:
            raise ConfigError(f"there is no study {name!r} in the configuration") from None

    def source_name(self, source: str) -> str:
        return self.sources.get(source, source)

    def study_dir(self, study: str) -> Path:
        return self.dropbox / study


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


#: pydantic's error types, in the words an admin reads
_WORDS = {
    "extra_forbidden": "unknown key",
    "unexpected_keyword_argument": "unknown key",
    "missing": "required, but not given",
    "missing_argument": "required, but not given",
}


def parse_config(data: Any, origin: str) -> Config:
    """Check `data` (the YAML file's content) in full; raise `ConfigError` naming every problem."""
    if data is None:
        raise ConfigError(f"{origin}: the file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of keys to values")
    from pydantic import TypeAdapter, ValidationError  # noqa: PLC0415 (~0.09 s: only here)

    try:
        checked: Any = TypeAdapter(_checked_class(Config)).validate_python(data)
    except ValidationError as exc:
        problems = [
            f"{origin}: {_field(err['loc'])}: {_WORDS.get(err['type'], err['msg'])}"
            for err in exc.errors()
        ]
        raise ConfigError("; ".join(problems)) from None
    config = _from_checked(checked)
    assert isinstance(config, Config)
    return config


def _checked_class(cls: type[Section]) -> type:
    """The dataclass pydantic validates a YAML mapping against for `cls`: its fields, in order,
    with `cls._SCHEMA`'s types and rules (a `Section` within them replaced by its own checked
    class), the defaults of `cls.__init__`, unknown keys refused, and `cls._check` run on the
    result, as the class itself would."""
    import dataclasses  # noqa: PLC0415 (only when checking)
    import inspect  # noqa: PLC0415 (only when checking)
    from types import GenericAlias  # noqa: PLC0415 (only when checking)
    from typing import Annotated  # noqa: PLC0415 (only when checking)

    def checked_type(kind: Any) -> Any:
        if isinstance(kind, type) and issubclass(kind, Section):
            return _checked_class(kind)
        if getattr(kind, "__origin__", None) is dict:  # dict[str, Study]
            key, value = kind.__args__
            return GenericAlias(dict, (key, checked_type(value)))
        return kind

    defaults = inspect.signature(cls.__init__).parameters
    fields: list[Any] = []
    for name in cls._FIELDS:
        kind, rule = cls._SCHEMA[name]
        kind = checked_type(kind)
        typed = kind if rule is None else Annotated[kind, rule]
        default = defaults[name].default
        if default is inspect.Parameter.empty:
            fields.append((name, typed))
        else:  # None (not checked by pydantic) stands for a fresh one: `cls.__init__` makes it
            fields.append((name, typed, dataclasses.field(default=default)))
    namespace: dict[str, Any] = {
        "__pydantic_config__": {"extra": "forbid"},
        "__post_init__": cls._check,
        "_plain": cls,  # for `_from_checked`
    }
    return dataclasses.make_dataclass(cls.__name__, fields, frozen=True, namespace=namespace)


def _from_checked(value: Any) -> Any:
    """The plain classes' instances for what pydantic returned (checked classes, and dicts of
    them), field by field."""
    plain = getattr(type(value), "_plain", None)
    if plain is not None:
        return plain(**{name: _from_checked(getattr(value, name)) for name in plain._FIELDS})
    if isinstance(value, dict):
        return {key: _from_checked(item) for key, item in value.items()}
    return value


def checked_path(path: Path) -> Path:
    """Where the checked copy of the YAML file at `path` lives."""
    return path.with_name(path.name + CHECKED_SUFFIX)


def _module_sha256() -> str:
    # The checked copy holds this module's classes as JSON: a change to them (an upgrade)
    # must not meet an old copy.
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} into the checked copy")


def _as_dict(value: Any) -> Any:
    """`value` with every `Value` in it as a dict of its fields (as `dataclasses.asdict`)."""
    if isinstance(value, Value):
        return {name: _as_dict(getattr(value, name)) for name in value._FIELDS}
    if isinstance(value, dict):
        return {key: _as_dict(item) for key, item in value.items()}
    return value


def checked_copy(config: Config, yaml_bytes: bytes) -> bytes:
    """The checked copy of `config`, the result of checking the YAML file `yaml_bytes`."""
    doc = {
        "format": CHECKED_FORMAT,
        "yaml_sha256": hashlib.sha256(yaml_bytes).hexdigest(),
        "module_sha256": _module_sha256(),
        "config": _as_dict(config),
    }
    return json.dumps(doc, default=_plain, sort_keys=True, indent=1).encode("utf-8") + b"\n"


def from_checked_copy(doc: dict[str, Any]) -> Config:
    """The `Config` a checked copy's ``config`` holds (it was checked when it was written)."""
    studies = {
        name: Study(
            destination=Path(study["destination"]),
            uploaders=tuple(study["uploaders"]),
            notify=tuple(study["notify"]),
        )
        for name, study in doc["studies"].items()
    }
    return Config(
        dropbox=Path(doc["dropbox"]),
        socket=Path(doc["socket"]),
        state_dir=Path(doc["state_dir"]),
        user=doc["user"],
        sources=dict(doc["sources"]),
        studies=studies,
        limits=Limits(**doc["limits"]),
        processor=ProcessorSettings(**doc["processor"]),
    )


def _read(path: Path) -> tuple[bytes, os.stat_result]:
    try:
        with open(path, "rb") as f:
            return f.read(), os.fstat(f.fileno())
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration {path}: {exc.strerror}") from None


def _use_checked_copy(path: Path, yaml_bytes: bytes, yaml_stat: os.stat_result) -> Config | None:
    """The checked copy of `path` if it is trustworthy and current, else None (check the YAML)."""
    copy = checked_path(path)
    try:
        fd = os.open(copy, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # none written (yet): the usual case until the admin runs check
    try:
        with open(fd, "rb") as f:
            st = os.fstat(f.fileno())
            # Whoever may write the copy decides what this program enforces: only the YAML's
            # own owner may, and nobody else.
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
            or doc.get("module_sha256") != _module_sha256()
        ):
            log.debug("%s is out of date: the YAML is checked instead", copy)
            return None
        return from_checked_copy(doc["config"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.debug("%s cannot be used (%s): the YAML is checked instead", copy, exc)
        return None


def _check_yaml(path: Path, data: bytes) -> Config:
    import yaml  # noqa: PLC0415 (not needed with a current checked copy)

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the file is not UTF-8 text") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where}: not valid YAML") from None
    return parse_config(doc, str(path))


def load_config(path: Path | str) -> Config:
    """The configuration in the YAML file at `path`: from its current checked copy if there is
    one, else read and checked in full; raise `ConfigError` naming file and field."""
    path = Path(path)
    data, st = _read(path)
    return _use_checked_copy(path, data, st) or _check_yaml(path, data)


def check_config(path: Path | str) -> Config:
    """Read and check the YAML file at `path` in full, and write its checked copy next to it
    when this process may (it runs as the file's owner). What ``dittohead-admin`` uses."""
    path = Path(path)
    data, st = _read(path)
    config = _check_yaml(path, data)
    if os.geteuid() == st.st_uid:
        try:
            write_checked_copy(checked_path(path), checked_copy(config, data), like=st)
        except OSError as exc:
            log.warning("could not write %s: %s", checked_path(path), exc.strerror)
    return config


def write_checked_copy(target: Path, data: bytes, *, like: os.stat_result) -> None:
    """Replace `target` with `data` atomically, readable by whoever may read the YAML file
    whose status is `like` (its group and read bits), and writable by its owner alone."""
    mode = stat.S_IMODE(like.st_mode) & 0o644 | stat.S_IWUSR
    fsops.replace_file(target, (data,), mode=mode, gid=like.st_gid)
