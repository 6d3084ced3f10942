"""Options, Admission and Staged are values (plain classes, not dataclasses: start-up time):
equal, hashed and shown by their fields, as the frozen dataclasses they replace were."""

from __future__ import annotations

from pathlib import Path

from dittohead.core.grammar import UploadRequest
from dittohead.receiver.config import Config
from dittohead.receiver.upload.gate import Admission, Options
from dittohead.receiver.upload.stage import Staged


def test_options_value_semantics() -> None:
    options = Options(Path("/etc/x.yaml"), True)
    assert options == Options(config=Path("/etc/x.yaml"), verbose=True)
    assert hash(options) == hash(Options(Path("/etc/x.yaml"), True))
    assert options != Options(Path("/etc/x.yaml"), False)
    assert repr(options) == f"Options(config={Path('/etc/x.yaml')!r}, verbose=True)"


def test_admission_value_semantics() -> None:
    config = Config(dropbox=Path("/srv/dropbox"))
    request = UploadRequest("nccam3", "brogden-a")
    admission = Admission(config, request, "jdoe", 5, None)
    assert admission == Admission(config, request, "jdoe", 5, None)
    assert admission != Admission(config, request, "jdoe", 5, 6)
    assert (admission.config, admission.request, admission.user) == (config, request, "jdoe")
    assert repr(admission) == (
        f"Admission(config={config!r}, request={request!r}, user='jdoe', inbox_fd=5, slot_fd=None)"
    )


def test_staged_value_semantics() -> None:
    staged = Staged(".entry", 2, 30, "0" * 64)
    assert staged == Staged(entry=".entry", files=2, bytes=30, manifest_sha256="0" * 64)
    assert hash(staged) == hash(Staged(".entry", 2, 30, "0" * 64))
    assert staged != Staged(".entry", 2, 31, "0" * 64)
    assert repr(staged) == (
        f"Staged(entry='.entry', files=2, bytes=30, manifest_sha256='{'0' * 64}')"
    )
