"""The window's preset editor: add a preset, or change one, in the per-user ``client.toml``.

It writes through `presets.save_preset`, which checks the result as ``dittohead`` will read it
before anything is written (a wrong study name is a dialog naming the key, and the file stays
as it was). The machine-wide file is never written: a preset the admin defined is changed by
writing a preset of the same name into the per-user file, which wins key by key.
"""

from __future__ import annotations

import tkinter as tk
from tkinter import filedialog, ttk

from dittohead.client import presets
from dittohead.client.gui import dialogs
from dittohead.client.presets import Preset
from dittohead.core.errors import ConfigError

_FIELDS = (
    ("name", "Name", 0),
    ("study", "Study", 1),
    ("folder", "Folder", 0),
    ("things", "Things (comma-separated)", 1),
    ("user", "User name", 0),
    ("identity", "Key file (optional)", 0),
)


class PresetEditor(dialogs.Dialog):
    """Closed with the saved preset's name, or None."""

    def __init__(self, parent: tk.Misc, target: str, preset: Preset | None) -> None:
        title = "new preset" if preset is None else f"preset {preset.name}"
        super().__init__(parent, f"dittohead: {title}")
        self.target = target
        self.replacing = preset.name if preset is not None else None
        self.message(f"Saved in {target}.")
        grid = ttk.Frame(self.body)
        grid.pack(fill="x")
        self.values: dict[str, tk.StringVar] = {}
        self.entries: dict[str, ttk.Entry] = {}
        initial = {
            "name": preset.name if preset else "",
            "study": (preset.study or "") if preset else "",
            "folder": (preset.folder or "") if preset else "",
            "things": ", ".join(preset.things) if preset else "",
            "user": (preset.user or "") if preset else "",
            "identity": (preset.identity or "") if preset else "",
        }
        for row, (key, text, underline) in enumerate(_FIELDS):
            value = tk.StringVar(self, initial[key])
            entry = ttk.Entry(grid, textvariable=value, width=48)
            label = ttk.Label(grid, text=text + ":", underline=underline)
            label.grid(row=row, column=0, sticky="w", padx=(0, 8), pady=3)
            entry.grid(row=row, column=1, sticky="we", pady=3)
            self.bind(f"<Alt-{text[underline].lower()}>", dialogs.focuser(entry))
            self.values[key], self.entries[key] = value, entry
        browse = ttk.Button(grid, text="Browse\u2026", command=self.pick_folder)
        browse.grid(row=2, column=2, padx=(8, 0))
        grid.columnconfigure(1, weight=1)
        self.buttons(("Save", 0, True), ("Cancel", 0, None))

    def pick_folder(self) -> None:
        chosen = filedialog.askdirectory(
            parent=self, title="dittohead: the folder to send", mustexist=True
        )
        if chosen:
            self.values["folder"].set(chosen)

    def close(self, result: object) -> None:
        if result is not True:
            super().close(None)
            return
        fields = {key: var.get().strip() for key, var in self.values.items()}
        things = [t.strip() for t in fields.pop("things").split(",") if t.strip()]
        try:
            presets.save_preset(self.target, {**fields, "things": things}, replacing=self.replacing)
        except (ConfigError, OSError) as exc:
            dialogs.show_error(
                self,
                exc
                if isinstance(exc, ConfigError)
                else ConfigError(
                    f"cannot write {self.target} ({exc}); check the folder's permissions"
                ),
            )
            return
        super().close(fields["name"])


def edit(parent: tk.Misc, target: str, preset: Preset | None) -> str | None:
    """Add (`preset` None) or change a preset; the saved name, or None."""
    editor = PresetEditor(parent, target, preset)
    result = editor.run(editor.entries["name" if preset is None else "study"])
    return result if isinstance(result, str) else None
