"""The receipt: the one JSON object the receiver prints when an upload is safely committed."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from dittohead.core.errors import TransferError


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """What the server says it committed (its fields are the JSON's keys)."""

    upload: str  # the entry id, ``<source>-<UTC time>-<random>``
    study: str
    source: str
    user: str
    files: int
    bytes: int
    manifest_sha256: str  # sha256 of the manifest as sent: ties the receipt to the content
    received_at: str  # server clock, ISO 8601 UTC

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Receipt:
        try:
            doc: Any = json.loads(text)
            return cls(**{f.name: doc[f.name] for f in fields(cls)})
        except (ValueError, KeyError, TypeError) as exc:
            raise TransferError(
                "the server's answer was not a dittohead receipt; is this a dittohead server?"
            ) from exc
