"""dittohead-gui.exe's entry point: what ``[project.scripts]`` makes of
``dittohead.client.gui.app:entry`` (PyInstaller freezes a script, not an entry point)."""

from dittohead.client.gui.app import entry

entry()
