"""The window's dialogs: trust this server?, a password, an error, a longer text.

Each is a small modal `tkinter.Toplevel` of its own rather than ``tkinter.messagebox``: its
title names what happened ("dittohead: could not log in"), which tests find with ``xdotool
search --name`` and a collector reads in the task bar; Return answers with the default button,
Escape with the safe one (refuse, give up, close); the focus starts where typing goes.
Errors are shown in dittohead's own words (`DittoheadError.message`: what happened and what to
do), under a headline chosen by the kind of error (`headline`).
"""

from __future__ import annotations

import functools
import tkinter as tk
from collections.abc import Callable
from tkinter import ttk

from dittohead.client.plan.batches import PartlySent
from dittohead.core.errors import (
    ConfigError,
    DittoheadError,
    HostKeyError,
    LocalFileError,
    NameRejected,
    NotAuthorized,
    OutOfSpace,
    TransferError,
    UploadRejected,
    UsageError,
)

WRAP = 520  # pixels: a message wraps well inside a 1024-pixel-wide screen

_UNREACHABLE = ("could not connect", "could not find the server", "no answer from", "refused the")


def headline(error: BaseException) -> str:
    """A short title for `error` (the words of the message say the rest)."""
    cause = error
    if isinstance(error, PartlySent) and isinstance(error.__cause__, DittoheadError):
        cause = error.__cause__  # what stopped the send after some parts were confirmed
    text = str(cause)
    if isinstance(cause, TransferError):
        if "could not log in" in text:
            return "could not log in"
        if any(words in text for words in _UNREACHABLE):
            return "server unreachable"
        return "the send was interrupted"
    if isinstance(cause, HostKeyError):
        return "server not trusted"
    if isinstance(cause, NotAuthorized):
        return "not allowed"
    if isinstance(cause, OutOfSpace):
        return "server disk full"
    if isinstance(cause, NameRejected | UploadRejected):
        return "file refused"
    if isinstance(cause, LocalFileError):
        return "a file on this PC"
    if isinstance(cause, ConfigError):
        return "settings"
    if isinstance(cause, UsageError):
        return "cannot send yet"
    return "the server failed"


def _invoker(button: ttk.Button) -> Callable[[tk.Event[tk.Misc]], object]:
    return lambda _e: button.invoke()


def focuser(widget: tk.Widget) -> Callable[[tk.Event[tk.Misc]], object]:
    return lambda _e: widget.focus_set()


class Dialog(tk.Toplevel):
    """A modal dialog over `parent`; `result` is what it was closed with."""

    def __init__(self, parent: tk.Misc, title: str) -> None:
        super().__init__(parent)
        self.title(title)
        self.result: object = None
        self.transient(parent.winfo_toplevel())
        self.resizable(False, False)
        self.body = ttk.Frame(self, padding=16)
        self.body.pack(fill="both", expand=True)
        self.protocol("WM_DELETE_WINDOW", self.dismiss)
        self.bind("<Escape>", lambda _e: self.dismiss())

    def buttons(self, *specs: tuple[str, int, object]) -> list[ttk.Button]:
        """Buttons (text, mnemonic index, result); the first is the default (Return)."""
        row = ttk.Frame(self.body)
        row.pack(side="bottom", anchor="e", pady=(12, 0))
        made = []
        for number, (text, underline, result) in enumerate(specs):
            button = ttk.Button(
                row,
                text=text,
                underline=underline,
                default="active" if number == 0 else "normal",
                command=functools.partial(self.close, result),
            )
            button.pack(side="left", padx=(8, 0))
            key = text[underline].lower()
            self.bind(f"<Alt-{key}>", _invoker(button))
            made.append(button)
        self.bind("<Return>", lambda _e: made[0].invoke())
        return made

    def message(self, text: str, *, mono: bool = False) -> None:
        label = ttk.Label(self.body, text=text, wraplength=WRAP, justify="left")
        if mono:
            label.configure(font="TkFixedFont")
        label.pack(anchor="w", pady=(0, 8))

    def close(self, result: object) -> None:
        self.result = result
        self.destroy()

    def dismiss(self) -> None:
        self.close(None)

    def run(self, focus: tk.Widget) -> object:
        self.update_idletasks()
        parent = self.master.winfo_toplevel()
        x = parent.winfo_rootx() + max(0, (parent.winfo_width() - self.winfo_reqwidth()) // 2)
        y = parent.winfo_rooty() + max(0, (parent.winfo_height() - self.winfo_reqheight()) // 3)
        self.geometry(f"+{x}+{y}")
        self.wait_visibility()
        self.grab_set()
        focus.focus_set()
        self.wait_window()
        return self.result


def ask_trust(parent: tk.Misc, server: str, fingerprint: str) -> bool:
    """The trust-on-first-use question; True only for an explicit "Trust"."""
    dialog = Dialog(parent, "dittohead: new server")
    dialog.message(
        f"The server {server} is not known to dittohead on this computer yet. "
        "Its identity (fingerprint) is:"
    )
    dialog.message(fingerprint, mono=True)
    dialog.message(
        "Check it with your admin before you trust it: if it does not match, someone may be "
        "pretending to be the server, and whatever you send would go to them."
    )
    # Refuse is the default: Return on a question one has not read must not trust a stranger.
    refuse, _trust = dialog.buttons(("Refuse", 0, False), ("Trust this server", 0, True))
    return dialog.run(refuse) is True


def ask_secret(parent: tk.Misc, prompt: str, *, title: str) -> str | None:
    """A password or passphrase; None when the collector gives up (Escape, Cancel)."""
    dialog = Dialog(parent, f"dittohead: {title}")
    dialog.message(prompt.strip().rstrip(":"))
    value = tk.StringVar(dialog)
    entry = ttk.Entry(dialog.body, textvariable=value, show="\u2022", width=32)
    entry.pack(anchor="w", fill="x")
    _ok, _cancel = dialog.buttons(("OK", 0, True), ("Cancel", 0, False))
    # In an entry Alt-o/Alt-c are still the buttons'; Return (OK) is bound on the dialog.
    return value.get() if dialog.run(entry) is True else None


def show_error(parent: tk.Misc, error: BaseException) -> None:
    """`error` in a dialog, in dittohead's words (`DittoheadError.message`)."""
    words = error.message if isinstance(error, DittoheadError) else str(error)
    dialog = Dialog(parent, f"dittohead: {headline(error)}")
    # The messages are one line for a terminal ("what happened; what to do; …"): one thought
    # a line reads better in a dialog.
    dialog.message(words[:1].upper() + words[1:].replace("; ", ";\n") + ".")
    (ok,) = dialog.buttons(("OK", 0, None))
    dialog.run(ok)


def show_text(parent: tk.Misc, title: str, text: str) -> None:
    """A longer text (a status answer) in a scrolled, read-only box."""
    dialog = Dialog(parent, f"dittohead: {title}")
    dialog.resizable(True, True)
    box = tk.Text(dialog.body, width=90, height=20, wrap="none", font="TkFixedFont")
    box.insert("1.0", text)
    box.configure(state="disabled")
    box.pack(fill="both", expand=True)
    (ok,) = dialog.buttons(("Close", 0, None))
    dialog.run(ok)
