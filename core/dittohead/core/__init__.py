"""Shared pieces of dittohead: the wire protocol, the path policy and the error root.

Imports neither the client nor the receiver, so both can rely on it (and the client can run on
Windows with nothing Linux-only loaded).

Importing it keeps dependencies' warnings for their developers off the users' stderr
(`dittohead.core.quiet`): every command imports it before anything loads asyncssh.
"""

from dittohead.core.quiet import silence_dependency_warnings

PROTOCOL_VERSION = "v1"

silence_dependency_warnings()
