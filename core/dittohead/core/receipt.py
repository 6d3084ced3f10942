"""The receipt: the one JSON object the receiver prints when an upload is safely committed."""

from __future__ import annotations

import json
from typing import Any, Final

from dittohead.core.errors import TransferError
from dittohead.core.values import Value


class Receipt(Value):
    """What the server says it committed (a `Value`; its fields are the JSON's keys)."""

    __slots__ = (
        "bytes",
        "files",
        "manifest_sha256",
        "received_at",
        "source",
        "study",
        "upload",
        "user",
    )
    _FIELDS = (
        "upload",
        "study",
        "source",
        "user",
        "files",
        "bytes",
        "manifest_sha256",
        "received_at",
    )

    upload: Final[str]  # the entry id, ``<source>-<UTC time>-<random>``
    study: Final[str]
    source: Final[str]
    user: Final[str]
    files: Final[int]
    bytes: Final[int]
    manifest_sha256: Final[str]  # sha256 of the manifest as sent: ties the receipt to the content
    received_at: Final[str]  # server clock, ISO 8601 UTC

    def __init__(
        self,
        *,
        upload: str,
        study: str,
        source: str,
        user: str,
        files: int,
        bytes: int,
        manifest_sha256: str,
        received_at: str,
    ) -> None:
        self.upload = upload
        self.study = study
        self.source = source
        self.user = user
        self.files = files
        self.bytes = bytes
        self.manifest_sha256 = manifest_sha256
        self.received_at = received_at

    def to_json(self) -> str:
        return json.dumps({key: getattr(self, key) for key in self._FIELDS}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Receipt:
        try:
            doc: Any = json.loads(text)
            return cls(**{k: doc[k] for k in cls._FIELDS})
        except (ValueError, KeyError, TypeError) as exc:
            raise TransferError(
                "the server's answer was not a dittohead receipt; is this a dittohead server?"
            ) from exc
