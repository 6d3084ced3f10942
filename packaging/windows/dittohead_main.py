"""dittohead.exe's entry point: what ``[project.scripts]`` makes of ``dittohead.client.cli:entry``
(PyInstaller freezes a script, not an entry point)."""

from dittohead.client.cli import entry

entry()
