"""The server's one YAML configuration file, as frozen pydantic models.

Unknown keys are errors, and every error names the file and the field, so that an admin who
mistypes ``uploaders`` hears about it at once instead of wondering why nobody may upload.
The keys and their meaning are documented for admins in docs/admins/README.md.

pydantic is imported with this module, so the upload program (which starts on every upload)
imports it only when it has to check the YAML itself: it normally reads the small copy of what
it needs that ``dittohead-admin check`` writes (`dittohead.receiver.config.checked`).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dittohead.core.errors import ConfigError
from dittohead.core.grammar import SOURCE_RE, STUDY_RE
from dittohead.receiver import dropbox

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


#: a byte count, given as a number or as text such as "500MB" or "2 GiB"
Size = Annotated[int, BeforeValidator(_parse_size), Field(ge=0)]
AbsolutePath = Annotated[Path, AfterValidator(_absolute)]


class _Model(BaseModel):
    """Frozen, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Limits(_Model):
    """Caps on what one upload may bring (the receiver enforces; the processor re-checks)."""

    max_upload_bytes: Size = 1024**4
    max_files: Annotated[int, Field(ge=1)] = 1_000_000
    max_file_bytes: Size = 256 * 1024**3
    #: per user; at least 2, since one send holds two (see `_a_send_holds_two_uploads`)
    max_concurrent_uploads: Annotated[int, Field(ge=1)] = 4
    #: seconds without a byte from the client before the receiver gives up
    stall_timeout: Annotated[float, Field(gt=0)] = 300.0
    #: keep this much free on the inbox's file system; refuse uploads that would eat it
    min_free_bytes: Size = 1024**3
    #: seconds a staging entry may sit without any change before the janitor moves it aside
    stale_after: Annotated[float, Field(gt=0)] = 86400.0

    @model_validator(mode="after")
    def _stale_after_outlasts_a_stall(self) -> Self:
        # A live upload is cut off by the receiver after stall_timeout of silence; only then
        # may the janitor call its staging entry abandoned.
        if self.stale_after <= 2 * self.stall_timeout:
            raise ValueError("stale_after must be more than twice stall_timeout")
        return self

    @model_validator(mode="after")
    def _a_send_holds_two_uploads(self) -> Self:
        # The client streams a send's next part while the server commits the last one
        # (client/plan/parts.py), so one send of several parts holds two upload slots at once:
        # with one slot every such send would be refused at its second part.
        if self.max_concurrent_uploads < 2:
            raise ValueError(
                "max_concurrent_uploads must be at least 2: a send of several parts holds two "
                f"uploads at once (it is {self.max_concurrent_uploads})"
            )
        return self


class Study(_Model):
    destination: AbsolutePath
    #: Unix groups whose members may send to this study
    uploaders: Annotated[tuple[str, ...], Field(min_length=1)]
    #: people told by mail about this study's uploads (used by the notifier)
    notify: tuple[str, ...] = ()


class ProcessorSettings(_Model):
    #: seconds the socket-activated processor waits for more work before it exits
    idle_timeout: Annotated[float, Field(gt=0)] = 60.0


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_duration(value: Any) -> Any:
    """Accept ``90s``, ``30m``, ``12h`` or ``7d`` (or a number of seconds) for a length of time."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]+)\s*([smhd])\s*", value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration such as 90s, 30m, 12h or 7d")
        return int(match[1]) * _DURATION_UNITS[match[2]]
    return value


#: a length of time in seconds, given as a number or as text such as "30m" or "7d"
Duration = Annotated[float, BeforeValidator(_parse_duration), Field(gt=0)]

#: deliberately loose (one @, no spaces, a dot in the domain or a bare host): the relay is
#: the judge of an address; this only catches a value that is plainly not one
_ADDRESS_RE = re.compile(r"[^@\s<>,;]+@[^@\s<>,;]+")
_RELAY_RE = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})")


def _address(value: str) -> str:
    if not _ADDRESS_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a mail address such as pi@lab.example.org")
    return value


MailAddress = Annotated[str, AfterValidator(_address)]


class Mail(_Model):
    """How ``dittohead-notify`` reaches people (docs/admins/notify.md); absent: no mail."""

    #: an SMTP relay, host:port (an IPv6 address in brackets: "[2001:db8::25]:25")
    relay: str
    #: the From: address of every mail
    sender: MailAddress
    #: an uploader's address made from their user name, e.g. "{user}@lab.example.org"
    uploader_address: str | None = None
    #: mail finalized uploads too (failures and warnings are always mailed)
    on_success: bool = False
    #: upgrade the relay connection with STARTTLS (the relay's certificate is verified)
    starttls: bool = False
    #: log in to the relay as this user; the password is read from `password_file`
    username: str | None = None
    #: a root-only file holding the relay password (handed to the unit by LoadCredential=)
    password_file: AbsolutePath | None = None
    #: addresses that hear about every warning and quarantine (the admins)
    admins: tuple[MailAddress, ...] = ()
    #: after a mail to someone, further notices for them wait this long and go as one digest
    digest_interval: Duration = 900.0

    @field_validator("relay")
    @classmethod
    def _relay(cls, value: str) -> str:
        match = _RELAY_RE.fullmatch(value)
        if match is None or not 0 < int(match["port"]) < 65536:
            raise ValueError(f"{value!r} is not host:port, such as localhost:25")
        return value

    @field_validator("uploader_address")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        fields = re.findall(r"\{([^{}]*)\}", value)
        if fields != ["user"] or value.count("{") != 1 or value.count("}") != 1:
            raise ValueError("must contain {user} once and no other {...} field")
        _address(value.replace("{user}", "user"))
        return value

    @model_validator(mode="after")
    def _login_needs_a_secret(self) -> Self:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together")
        if self.username is not None and not self.starttls and not self.local_relay:
            raise ValueError("a login to a relay on another host needs starttls: true")
        return self

    @property
    def host(self) -> str:
        return self.relay.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.relay.rpartition(":")[2])

    @property
    def local_relay(self) -> bool:
        return self.host in ("localhost", "127.0.0.1", "::1")

    def uploader(self, user: str) -> str | None:
        """The address of the uploader `user`, when uploaders are mailed."""
        if self.uploader_address is None:
            return None
        return self.uploader_address.replace("{user}", user)


class Disk(_Model):
    """Disk levels announced per file system (destinations and the inbox's)."""

    #: percent used; each level is announced once when crossed upward
    warn_percent: tuple[Annotated[int, Field(ge=1, le=100)], ...] = (90, 95, 99)

    @field_validator("warn_percent")
    @classmethod
    def _sorted(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sorted(set(value)))


class Stations(_Model):
    """Stations that stop sending."""

    #: a station that has sent before and is silent this long is announced (absent: never)
    silent_after: Duration | None = None


_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _this_host() -> str:
    return socket.gethostname().split(".")[0] or "localhost"


class Cluster(_Model):
    """Several hosts on one dropbox (docs/admins/scale-out.md)."""

    #: this host's name in the leases it writes; unique among the hosts (default: the host name)
    host: str = Field(default_factory=_this_host)
    #: how long a claimed entry stays with a host that stopped renewing its lease before
    #: another host takes it over (renewed every quarter of it while the host works)
    lease: Duration = 300.0

    @field_validator("host")
    @classmethod
    def _host_name(cls, value: str) -> str:
        if not _HOST_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a host name (letters, digits, '.', '_', '-')")
        return value


class Config(_Model):
    dropbox: AbsolutePath
    socket: AbsolutePath = Path("/run/dittohead/processor.sock")
    state_dir: AbsolutePath = Path("/var/lib/dittohead")
    #: the account the processor runs as, owner of everything it stores
    user: str = "dittohead"
    #: station ids → display names
    sources: dict[str, str] = {}
    studies: dict[str, Study] = {}
    limits: Limits = Limits()
    processor: ProcessorSettings = ProcessorSettings()
    #: mail delivery by dittohead-notify; absent: nothing is mailed (nor queued)
    mail: Mail | None = None
    disk: Disk = Disk()
    stations: Stations = Stations()
    cluster: Cluster = Cluster()

    @field_validator("sources")
    @classmethod
    def _source_ids(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not SOURCE_RE.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid station id")
        return value

    @field_validator("studies")
    @classmethod
    def _study_names(cls, value: dict[str, Study]) -> dict[str, Study]:
        for name in value:
            if not STUDY_RE.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a valid study name (lower-case letters, digits, '-', '_')"
                )
        return value

    def study(self, name: str) -> Study:
        try:
            return self.studies[name]
        except KeyError:
            raise ConfigError(f"there is no study {name!r} in the configuration") from None

    def source_name(self, source: str) -> str:
        return self.sources.get(source, source)

    def study_dir(self, study: str) -> Path:
        return dropbox.study_dir(self.dropbox, study)


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


#: pydantic's error types, in the words an admin reads ({...} from the error's context)
_WORDS = {
    "extra_forbidden": "unknown key",
    "missing": "required, but not given",
    "greater_than": "must be more than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "too_short": "must list at least {min_length}",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number (seconds may be written 300 or 300.5)",
    "float_type": "must be a number",
    "string_type": "must be text",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "path_type": "must be a path such as /srv/dittohead",
    "dict_type": "must be a mapping of keys to values (indented 'key: value' lines)",
    "tuple_type": "must be a list such as [a, b]",
    "list_type": "must be a list such as [a, b]",
}


def _words(err: Any) -> str:
    """One pydantic error in an admin's words (never pydantic's "Value error, ...")."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])  # our own validators' words, as written
    template = _WORDS.get(kind)
    if template is None:
        return str(err["msg"]).removeprefix("Value error, ")
    # 0.0 reads as 0 to an admin who wrote "stall_timeout: 0"
    plain = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in ctx.items()}
    words = template.format(**plain)
    given = err.get("input")
    if kind not in ("missing", "extra_forbidden") and isinstance(given, str | int | float):
        words += f" (it is {given!r})"
    return words


def parse_config(data: Any, origin: str) -> Config:
    """Check `data` (the YAML file's content) in full; raise `ConfigError` naming every problem."""
    if data is None:
        raise ConfigError(f"{origin}: the file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of keys to values")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = [f"{origin}: {_field(err['loc'])}: {_words(err)}" for err in exc.errors()]
        raise ConfigError("; ".join(problems)) from None


def read_config_file(path: Path) -> bytes:
    """The YAML file's bytes; `ConfigError` when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration {path}: {exc.strerror}") from None


def parse_config_file(path: Path, data: bytes) -> Config:
    """Check the YAML file `path` whose bytes are `data`."""
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
    """The configuration in the YAML file at `path`, checked in full; raise `ConfigError` naming
    file and field."""
    path = Path(path)
    return parse_config_file(path, read_config_file(path))
