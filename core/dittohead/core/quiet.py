"""Warnings meant for a dependency's developers, kept off dittohead's users' screens.

asyncssh still speaks DSA (``ssh-dss``) keys, so its modules name cryptography's DSA classes
when they are imported. cryptography 51 deprecated DSA and says so with a
``CryptographyDeprecationWarning`` each time one of those names is read: five lines of
"DSA is deprecated ..." on the stderr of every command that loads asyncssh (``dittohead-admin
--help`` and ``demo``, ``dittohead send`` when it sends through asyncssh). Neither a collector
nor an admin can do anything about them, and they bury dittohead's own one-line messages.

`silence_dependency_warnings` ignores exactly that kind of warning, and nothing else:

- *category* ``UserWarning``: cryptography's deprecation warnings are UserWarnings on purpose
  (Python hides DeprecationWarning by default). Naming ``CryptographyDeprecationWarning``
  itself would mean importing cryptography (~150 ms) in every command, asyncssh or not, so
  its base class is named instead, with the module to narrow it;
- *module* asyncssh's own: cryptography warns with ``stacklevel=2``, so each warning names the
  asyncssh line that read the deprecated name. asyncssh itself issues no warnings: whatever is
  attributed to it is a dependency's notice about asyncssh's code.

dittohead's own warnings (``warnings.warn`` and the log's warnings alike), every other
library's, and other categories from asyncssh (a RuntimeWarning about a coroutine never
awaited, a ResourceWarning) still come through. Pinned dependency versions
(``requirements/``) keep a new release from adding others unseen, and
``tests/integration/test_entry_points.py`` fails when any command's stderr carries one.

It runs when ``dittohead.core`` is imported (its ``__init__``): every command imports it
before anything loads asyncssh, so no entry point needs a line of its own. The cost is one
small regular expression compiled per process (~0.05 ms; ``re`` and ``warnings`` are loaded by
then in every command anyway).
"""

from __future__ import annotations

import warnings

#: the modules whose dependency warnings are silenced: asyncssh and its submodules
MODULES = r"asyncssh(\.|$)"


def silence_dependency_warnings() -> None:
    """Ignore the UserWarnings (cryptography's deprecation notices among them) that asyncssh's
    modules trigger; idempotent (`warnings.filterwarnings` replaces an identical filter)."""
    warnings.filterwarnings("ignore", category=UserWarning, module=MODULES)
