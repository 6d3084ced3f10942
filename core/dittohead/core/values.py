"""Value classes without `dataclasses`.

The short-lived commands' start-up is part of every send: `dataclasses` (which imports
`inspect`, ~4 ms) and each class it makes (~0.4 ms: code generated with ``exec``) came before
``ssh`` started on the client and before the receiver read its first byte. A `Value` subclass
writes its ``__slots__``, ``__init__`` and field annotations (``Final``, so that mypy refuses
changes, as a frozen dataclass did) and names its fields in order in ``_FIELDS``; equality,
hashing and ``repr`` come from here, as a frozen dataclass would have them.

Changes are refused by mypy only, not at run time: a frozen dataclass's run-time refusal made
each instance about three times as slow to create (~210 instead of ~70 ns), and some values
are made once per file of a send.
"""

from __future__ import annotations


class Value:
    """Equal (and hashed alike) when of the same class with equal fields; shown as
    ``Name(field=value, ...)`` in `_FIELDS` order."""

    __slots__ = ()

    #: the fields, in the order of ``__init__``'s parameters
    _FIELDS: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple([getattr(self, name) for name in self._FIELDS])

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._FIELDS)
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Value)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())
