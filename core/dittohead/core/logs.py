"""Loggers that load `logging` only when there is a record to emit.

The short-lived commands (``dittohead send``, ``dittohead-receive``) log rarely: a warning now
and then, debug lines only when asked for. Loading `logging` (with traceback, string,
threading and weakref) would come before the first byte could move on both sides: before
``ssh`` starts on the client, before the receiver reads. `getLogger` returns a
`Logger` that behaves as ``logging.getLogger(name)`` would:

- while `logging` is not loaded, nobody can have configured it, so its defaults hold: DEBUG and
  INFO records are dropped (the root logger's level is WARNING) without loading it; WARNING and
  above load it and go through it;
- once it is loaded (by a `Logger`, a library, or a long-running service's own setup), every
  call goes straight to the real logger, which decides as always.

A command sets up its handlers with `configure`: at once when `logging` is loaded already,
else before the first record goes through it, so a command that never logs never loads it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

#: the setup `configure` was given while `logging` was not loaded yet (at most one)
_pending: list[Callable[[], None]] = []


def configure(setup: Callable[[], None], *, now: bool = False) -> None:
    """Call `setup` (which imports `logging` and sets up handlers) now if `logging` is loaded
    or `now` is true, else before the first record a `Logger` emits (replacing a setup still
    waiting)."""
    _pending.clear()
    if now or "logging" in sys.modules:
        setup()
    else:
        _pending.append(setup)


def _logging(load: bool) -> ModuleType | None:
    """`logging`, set up as `configure` asked; loaded only if `load`, else None when not
    loaded yet."""
    logging = sys.modules.get("logging")
    if logging is None:
        if not load:
            return None
        import logging
    if _pending:
        _pending.pop()()
    return logging


class Logger:
    """The few methods of `logging.Logger` the commands use; see the module's docstring."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def _emit(self, method: str, load: bool, msg: object, args: Any, kwargs: Any) -> None:
        logging = _logging(load)
        if logging is not None:
            # Records name the caller's line, not this module's.
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 2
            getattr(logging.getLogger(self.name), method)(msg, *args, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._emit("debug", False, msg, args, kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._emit("info", False, msg, args, kwargs)

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._emit("warning", True, msg, args, kwargs)

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._emit("error", True, msg, args, kwargs)

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._emit("exception", True, msg, args, kwargs)


def getLogger(name: str) -> Logger:  # as logging's, so that the modules read the same
    return Logger(name)
