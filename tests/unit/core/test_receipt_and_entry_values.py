"""Receipt and ManifestEntry are records (frozen dataclasses): equal, hashed and shown by their
fields, and the receipt's JSON is byte for byte what the receiver has always written
(``json.dumps(dataclasses.asdict(receipt), sort_keys=True)``)."""

from __future__ import annotations

import pytest

from dittohead.core.errors import TransferError
from dittohead.core.manifest import ManifestEntry
from dittohead.core.receipt import Receipt

RECEIPT = Receipt(
    upload="brogden-a-20260101T000000Z-0123456789abcdef",
    study="nccam3",
    source="brogden-a",
    user="jdoe",
    files=3,
    bytes=12345,
    manifest_sha256="a" * 64,
    received_at="2026-01-01T00:00:00Z",
)

# Written by the dataclass version (asdict + sort_keys): every field, in this order.
RECEIPT_JSON = (
    '{"bytes": 12345, "files": 3, "manifest_sha256": "' + "a" * 64 + '", '
    '"received_at": "2026-01-01T00:00:00Z", "source": "brogden-a", "study": "nccam3", '
    '"upload": "brogden-a-20260101T000000Z-0123456789abcdef", "user": "jdoe"}'
)


def test_receipt_json_is_what_the_dataclass_wrote() -> None:
    assert RECEIPT.to_json() == RECEIPT_JSON
    odd = Receipt(upload='ü"x', study="s", source="src", user="u", files=0, bytes=0,
                  manifest_sha256="", received_at="t")  # fmt: skip
    assert odd.to_json() == (
        '{"bytes": 0, "files": 0, "manifest_sha256": "", "received_at": "t", "source": "src", '
        '"study": "s", "upload": "\\u00fc\\"x", "user": "u"}'
    )


def test_receipt_round_trips_and_is_a_value() -> None:
    again = Receipt.from_json(RECEIPT_JSON)
    assert again == RECEIPT and hash(again) == hash(RECEIPT)
    assert Receipt.from_json(RECEIPT.to_json()) == RECEIPT
    assert Receipt.from_json(RECEIPT_JSON.replace('"files": 3', '"files": 4')) != RECEIPT
    assert repr(RECEIPT) == (
        "Receipt(upload='brogden-a-20260101T000000Z-0123456789abcdef', study='nccam3', "
        f"source='brogden-a', user='jdoe', files=3, bytes=12345, manifest_sha256='{'a' * 64}', "
        "received_at='2026-01-01T00:00:00Z')"
    )


@pytest.mark.parametrize("missing", ["upload", "bytes", "received_at"])
def test_a_receipt_missing_a_field_is_refused(missing: str) -> None:
    doc = RECEIPT_JSON.replace(f'"{missing}"', '"other"')
    with pytest.raises(TransferError, match="not a dittohead receipt"):
        Receipt.from_json(doc)


def test_manifest_entry_is_a_value() -> None:
    entry = ManifestEntry("a/b.txt", 3, "0" * 64)
    assert entry == ManifestEntry("a/b.txt", 3, "0" * 64)
    assert hash(entry) == hash(ManifestEntry("a/b.txt", 3, "0" * 64))
    assert entry != ManifestEntry("a/b.txt", 4, "0" * 64)
    assert entry != ManifestEntry("a/b.txt", 3, "1" * 64)
    as_tuple: object = ("a/b.txt", 3, "0" * 64)
    assert entry != as_tuple
    assert repr(entry) == f"ManifestEntry(path='a/b.txt', size=3, sha256='{'0' * 64}')"
