"""``dittohead-gui``: the collector's window (DESIGN, "The collector's side").

A preset (from ``client.toml``, added or changed with `presets_editor`), the folder (the
platform's own folder dialog), the things in it as a checklist, the login (user name and
password, or the preset's key), Send (the default button: Return), a progress bar in bytes with
rate and time left, Cancel (Escape), Status. The send runs in `worker.Worker`'s thread; its
events are polled here with ``after``, so the window stays responsive through a long send, and
its questions and errors become `dialogs`. Only this package and the CLI show anything.

Keyboard: Tab walks the fields in reading order; every label and button has a mnemonic
(Alt + the underlined letter); Return sends, Escape cancels; the "clam" theme draws the focus.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import tkinter as tk
from collections.abc import Sequence
from tkinter import filedialog, ttk

from dittohead.client import presets
from dittohead.client.gui import dialogs, presets_editor
from dittohead.client.gui.worker import (
    Asked,
    Cancelled,
    Crashed,
    Event,
    Failed,
    Finished,
    Noted,
    Progressed,
    StatusAnswered,
    Worker,
)
from dittohead.client.presets import ClientConfig, Preset
from dittohead.client.presets_cmd import Settled, settle
from dittohead.client.progress import Reading, describe
from dittohead.core.errors import ConfigError, DittoheadError, UsageError

POLL_MS = 50
EX_SOFTWARE = 70


def things_in(folder: str) -> list[str]:
    """The folder's subfolders (its things), sorted; hidden ones left out."""
    try:
        names = [e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return []
    return sorted(names, key=str.lower)


class Window:
    def __init__(self, root: tk.Tk, config_file: str | None, preset: str | None) -> None:
        self.root = root
        self.config_file = config_file
        self.events: queue.Queue[Event] = queue.Queue()
        self.worker = Worker(self.events)
        self.config: ClientConfig = ClientConfig((), presets.ServerSettings(), ())
        self.checks: list[tuple[str, tk.BooleanVar]] = []
        self.sending: Settled | None = None
        self.sent_user: str | None = None
        root.title("dittohead")
        root.minsize(720, 520)
        style = ttk.Style(root)
        if "clam" in style.theme_names() and sys.platform.startswith("linux"):
            style.theme_use("clam")  # draws the keyboard focus; Windows keeps its own theme
            style.configure("Horizontal.TProgressbar", background="#3b7dd8")
        self._build()
        self.reload(preset)
        root.protocol("WM_DELETE_WINDOW", self.on_close)
        root.bind("<Return>", lambda _e: self.send())
        root.bind("<KP_Enter>", lambda _e: self.send())
        root.bind("<Escape>", lambda _e: self.cancel())
        root.after(POLL_MS, self.poll)

    # -- layout --------------------------------------------------------------------------------

    def _label(self, parent: tk.Misc, text: str, underline: int, target: tk.Widget) -> ttk.Label:
        label = ttk.Label(parent, text=text, underline=underline)
        self.root.bind(f"<Alt-{text[underline].lower()}>", lambda _e: target.focus_set())
        return label

    def _button(self, parent: tk.Misc, text: str, underline: int, command: object) -> ttk.Button:
        button = ttk.Button(parent, text=text, underline=underline, command=command)  # type: ignore[arg-type]
        self.root.bind(f"<Alt-{text[underline].lower()}>", lambda _e: button.invoke())
        return button

    def _build(self) -> None:
        frame = ttk.Frame(self.root, padding=12)
        frame.pack(fill="both", expand=True)
        frame.columnconfigure(1, weight=1)

        self.preset_var = tk.StringVar(self.root)
        self.preset_box = ttk.Combobox(frame, textvariable=self.preset_var, state="readonly")
        self.preset_box.bind("<<ComboboxSelected>>", lambda _e: self.choose(self.preset_var.get()))
        self._label(frame, "Preset:", 1, self.preset_box).grid(row=0, column=0, sticky="w")
        self.preset_box.grid(row=0, column=1, sticky="we", pady=3)
        edits = ttk.Frame(frame)
        edits.grid(row=0, column=2, sticky="e")
        self._button(edits, "New\u2026", 0, self.new_preset).pack(side="left", padx=(8, 0))
        self._button(edits, "Edit\u2026", 0, self.edit_preset).pack(side="left", padx=(8, 0))

        self.where = ttk.Label(frame, text="")
        self.where.grid(row=1, column=1, columnspan=2, sticky="w")

        self.folder_var = tk.StringVar(self.root)
        self.folder_entry = ttk.Entry(frame, textvariable=self.folder_var)
        self.folder_entry.bind("<FocusOut>", lambda _e: self.fill_things(self.kept_ticks()))
        self._label(frame, "Folder:", 0, self.folder_entry).grid(row=2, column=0, sticky="w")
        self.folder_entry.grid(row=2, column=1, sticky="we", pady=3)
        self._button(frame, "Browse\u2026", 0, self.pick_folder).grid(
            row=2, column=2, sticky="e", padx=(8, 0)
        )

        self.things_frame = ttk.LabelFrame(frame, text="Things to send", padding=8)
        self.things_frame.grid(row=3, column=0, columnspan=3, sticky="we", pady=6)

        login = ttk.Frame(frame)
        login.grid(row=4, column=0, columnspan=3, sticky="we", pady=3)
        self.user_var = tk.StringVar(self.root)
        self.user_entry = ttk.Entry(login, textvariable=self.user_var, width=24)
        self._label(login, "User name:", 0, self.user_entry).pack(side="left")
        self.user_entry.pack(side="left", padx=(8, 16))
        self.password_var = tk.StringVar(self.root)
        self.password_entry = ttk.Entry(
            login, textvariable=self.password_var, show="\u2022", width=24
        )
        self.password_label = self._label(login, "Password:", 0, self.password_entry)
        self.password_label.pack(side="left")
        self.password_entry.pack(side="left", padx=(8, 16))
        # A key's path can be long: on a row of its own, wrapped, never clipped.
        self.key_label = ttk.Label(frame, text="", wraplength=860, justify="left")
        self.key_label.grid(row=5, column=0, columnspan=3, sticky="w")

        self.bar = ttk.Progressbar(frame, mode="determinate", maximum=1.0)
        self.bar.grid(row=6, column=0, columnspan=3, sticky="we", pady=(10, 2))
        self.progress_text = ttk.Label(frame, text="")
        self.progress_text.grid(row=7, column=0, columnspan=3, sticky="w")

        out = ttk.Frame(frame)
        out.grid(row=8, column=0, columnspan=3, sticky="nsew", pady=6)
        frame.rowconfigure(8, weight=1)
        self.output = tk.Text(out, height=8, wrap="word", state="disabled", takefocus=False)
        scroll = ttk.Scrollbar(out, command=self.output.yview)
        self.output.configure(yscrollcommand=scroll.set)
        scroll.pack(side="right", fill="y")
        self.output.pack(side="left", fill="both", expand=True)

        buttons = ttk.Frame(frame)
        buttons.grid(row=9, column=0, columnspan=3, sticky="e")
        self.send_button = self._button(buttons, "Send", 0, self.send)
        self.send_button.configure(default="active")  # Return
        self.cancel_button = self._button(buttons, "Cancel", 0, self.cancel)
        self.status_button = self._button(buttons, "Status", 1, self.status)
        self.close_button = self._button(buttons, "Quit", 0, self.on_close)
        for button in (self.send_button, self.cancel_button, self.status_button):
            button.pack(side="left", padx=(8, 0))
        self.close_button.pack(side="left", padx=(24, 0))
        self.cancel_button.state(["disabled"])

    # -- presets -------------------------------------------------------------------------------

    def reload(self, choose: str | None = None) -> None:
        try:
            self.config = presets.load(self.config_file)
        except ConfigError as exc:
            dialogs.show_error(self.root, exc)
            return
        names = [p.name for p in self.config.presets]
        self.preset_box.configure(values=names)
        if choose is not None and choose not in names:
            dialogs.show_error(self.root, self._no_preset(choose))
            choose = None
        current = self.preset_var.get()
        pick = choose or (current if current in names else (names[0] if names else None))
        if pick is not None:
            self.choose(pick)
        else:
            self.write("No presets yet: press New\u2026 to add one.")

    def _no_preset(self, name: str) -> DittoheadError:
        try:
            self.config.preset(name)
        except ConfigError as exc:
            return exc
        raise AssertionError("unreachable")

    def preset(self) -> Preset | None:
        name = self.preset_var.get()
        return next((p for p in self.config.presets if p.name == name), None)

    def choose(self, name: str) -> None:
        self.preset_var.set(name)
        preset = self.preset()
        if preset is None:
            return
        server = self.config.server
        host = server.host or "no server set"
        self.where.configure(
            text=f"study {preset.study}  \u00b7  server {host}  \u00b7  "
            f"station {server.station or 'not set'}"
        )
        self.folder_var.set(preset.folder or "")
        self.user_var.set(preset.user or "")
        self.password_var.set("")
        if preset.identity:
            self.key_label.configure(text=f"key: {preset.identity}")
            self.password_entry.state(["disabled"])
        else:
            self.key_label.configure(text="")
            self.password_entry.state(["!disabled"])
        self.fill_things(list(preset.things))

    def target_file(self) -> str:
        """Where the editor and a remembered login write: the per-user file, or the one file
        ``--config``/``$DITTOHEAD_CONFIG`` named (which is read alone)."""
        if self.config.user_file is not None:
            return self.config.user_file
        return self.config.files[0] if self.config.files else presets.user_file()

    def new_preset(self) -> None:
        self._edited(presets_editor.edit(self.root, self.target_file(), None))

    def edit_preset(self) -> None:
        preset = self.preset()
        if preset is None:
            self.new_preset()
        else:
            self._edited(presets_editor.edit(self.root, self.target_file(), preset))

    def _edited(self, name: str | None) -> None:
        if name is not None:
            self.preset_var.set("")
            self.reload(name)

    # -- folder and things ---------------------------------------------------------------------

    def pick_folder(self) -> None:
        start = self.folder_var.get()
        chosen = filedialog.askdirectory(
            parent=self.root,
            title="dittohead: the folder to send",
            initialdir=start if os.path.isdir(start) else None,
            mustexist=True,
        )
        if chosen:
            self.folder_var.set(os.path.normpath(chosen))
            self.fill_things(self.kept_ticks())

    def ticked(self) -> list[str]:
        return [name for name, var in self.checks if var.get()]

    def kept_ticks(self) -> list[str]:
        """What stays ticked when the folder changes: a choice of things carries over, but
        everything ticked meant the whole folder, so the new folder's things all start ticked
        (not the old folder's names, which the new one may not have)."""
        ticked = self.ticked()
        return [] if len(ticked) == len(self.checks) else ticked

    def fill_things(self, ticked: Sequence[str]) -> None:
        for child in self.things_frame.winfo_children():
            child.destroy()
        names = things_in(self.folder_var.get())
        names += [t for t in ticked if t not in names]  # a preset's thing not here (yet)
        self.checks = []
        if not names:
            ttk.Label(self.things_frame, text="No subfolders: the whole folder is sent.").grid(
                row=0, column=0, sticky="w"
            )
            return
        every = not ticked
        columns = 4
        for number, name in enumerate(names):
            var = tk.BooleanVar(self.root, every or name in ticked)
            box = ttk.Checkbutton(self.things_frame, text=name, variable=var)
            box.grid(row=number // columns, column=number % columns, sticky="w", padx=(0, 24))
            self.checks.append((name, var))

    def things(self) -> tuple[str, ...]:
        """The ticked things; () (the whole folder) when all are ticked or there are none."""
        if not self.checks:
            return ()
        ticked = self.ticked()
        if not ticked:
            raise UsageError("tick at least one thing to send (or all, for the whole folder)")
        return () if len(ticked) == len(self.checks) else tuple(ticked)

    # -- sending -------------------------------------------------------------------------------

    def settled(self) -> Settled:
        preset = self.preset()
        if preset is None:
            raise UsageError("pick a preset first (or add one with New\u2026)")
        folder = self.folder_var.get().strip()
        if not folder or not os.path.isdir(folder):
            raise UsageError(f"the folder {folder or '(none)'} does not exist: pick it with Browse")
        args = argparse.Namespace(
            config=self.config_file, preset=preset.name, study=None, source=None, host=None,
            port=None, user=self.user_var.get().strip() or None, identity=None,
            known_hosts=None, folder=folder, things=list(self.things()),
        )  # fmt: skip
        return settle(args)

    def busy(self, busy: bool) -> None:
        self.send_button.state(["disabled"] if busy else ["!disabled"])
        self.status_button.state(["disabled"] if busy else ["!disabled"])
        self.cancel_button.state(["!disabled"] if busy else ["disabled"])
        self.root.configure(cursor="watch" if busy else "")

    def send(self) -> None:
        if self.worker.busy:
            return
        try:
            settled = self.settled()
        except DittoheadError as exc:
            dialogs.show_error(self.root, exc)
            return
        self.sending, self.sent_user = settled, self.user_var.get().strip() or None
        self.busy(True)
        self.bar.configure(value=0, maximum=1.0)
        self.progress_text.configure(text="looking for what is new\u2026")
        self.write(f"Sending {settled.folder} to study {settled.study}\u2026")
        self.worker.start_send(settled, self.password_var.get() or None, None)

    def status(self) -> None:
        if self.worker.busy:
            return
        preset = self.preset()
        try:
            if preset is None:
                raise UsageError("pick a preset first (or add one with New\u2026)")
            args = argparse.Namespace(
                config=self.config_file, preset=preset.name, study=None, source=None,
                host=None, port=None, user=self.user_var.get().strip() or None, identity=None,
                known_hosts=None,
            )  # fmt: skip
            settled = settle(args, need_folder=False, need_source=False)
        except DittoheadError as exc:
            dialogs.show_error(self.root, exc)
            return
        self.busy(True)
        self.progress_text.configure(text="asking the server\u2026")
        self.worker.start_status(settled, self.password_var.get() or None)

    def cancel(self) -> None:
        if self.worker.busy:
            self.progress_text.configure(text="stopping\u2026")
            self.worker.stop()

    def on_close(self) -> None:
        if self.worker.busy:
            dialog = dialogs.Dialog(self.root, "dittohead: stop sending?")
            dialog.message(
                "A send is still running. Stop it and close the window? What the server has "
                "already confirmed is kept; the next Send goes on from there."
            )
            keep, _stop = dialog.buttons(("Keep sending", 0, False), ("Stop and close", 0, True))
            if dialog.run(keep) is not True:
                return
            self.worker.stop()
            if self.worker.thread is not None:
                # The send stops at its next reading; an ssh still connecting is left to end
                # with the process (its stdin closes: the receiver stores nothing).
                self.worker.thread.join(timeout=3)
        self.root.destroy()

    # -- events from the worker ----------------------------------------------------------------

    def poll(self) -> None:
        try:
            while True:
                self.handle(self.events.get_nowait())
        except queue.Empty:
            pass
        if self.root.winfo_exists():
            self.root.after(POLL_MS, self.poll)

    def handle(self, event: Event) -> None:
        if isinstance(event, Progressed):
            self.show(event.reading)
        elif isinstance(event, Asked):
            event.reply.put(self.answer(event))
        elif isinstance(event, Noted):
            self.write(f"Note: {event.text}")
        elif isinstance(event, Finished):
            self.busy(False)
            if event.receipts:
                total = sum(r.bytes for r in event.receipts)
                self.bar.configure(maximum=max(total, 1), value=max(total, 1))
                self.progress_text.configure(text="sent and confirmed by the server")
                self.remember()
            else:
                self.progress_text.configure(text="")
            self.write(event.text)
        elif isinstance(event, StatusAnswered):
            self.busy(False)
            self.progress_text.configure(text="")
            self.write(event.text)
            dialogs.show_text(self.root, "status", event.text)
        elif isinstance(event, Failed):
            self.busy(False)
            self.failed(event.error)
        elif isinstance(event, Crashed):
            self.busy(False)
            self.progress_text.configure(text="")
            dialogs.show_error(self.root, RuntimeError(event.text))

    def answer(self, event: Asked) -> object:
        if event.kind == "trust":
            return dialogs.ask_trust(self.root, event.server, event.text)
        title = "wrong password" if event.text.startswith("Wrong") else event.kind
        return dialogs.ask_secret(self.root, event.text, title=title)

    def show(self, reading: Reading) -> None:
        self.bar.configure(maximum=max(reading.bytes_total, 1), value=reading.bytes_done)
        self.progress_text.configure(text=describe(reading))

    def failed(self, error: DittoheadError) -> None:
        stopped = isinstance(error, Cancelled) or isinstance(error.__cause__, Cancelled)
        self.progress_text.configure(text="stopped" if stopped else "not sent")
        self.write(error.message)
        if stopped:
            self.write("Press Send to go on: what the server confirmed is not sent again.")
        if not stopped:
            self.bar.configure(value=0)  # nothing of this part was stored
            dialogs.show_error(self.root, error)

    def remember(self) -> None:
        """Keep the user name typed for this preset (never the password: there is no key for
        one), in the file the editor writes (`target_file`)."""
        settled, typed = self.sending, self.sent_user
        self.sending, self.sent_user = None, None
        if settled is None or settled.preset is None or not typed or settled.preset.user == typed:
            return
        try:
            presets.remember_login(self.target_file(), settled.preset.name, typed)
        except (OSError, ConfigError) as exc:
            self.write(f"Note: could not remember the user name: {exc}")
        else:
            self.reload()

    def write(self, text: str) -> None:
        self.output.configure(state="normal")
        if self.output.index("end-1c") != "1.0":
            self.output.insert("end", "\n")
        self.output.insert("end", text)
        self.output.see("end")
        self.output.configure(state="disabled")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dittohead-gui", description="Send study data to the lab's dittohead server."
    )
    parser.add_argument("--config", metavar="FILE", help="the client configuration")
    parser.add_argument("--preset", metavar="NAME", help="the preset to start with")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        root = tk.Tk(className="dittohead")
    except tk.TclError as exc:
        print(f"dittohead-gui: cannot open a window ({exc}); use 'dittohead send'", file=sys.stderr)
        return EX_SOFTWARE
    root.geometry("900x600")
    Window(root, args.config, args.preset)
    root.mainloop()
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
