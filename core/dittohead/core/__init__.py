"""Shared pieces of dittohead: the wire protocol, the path policy and the error root.

Imports neither the client nor the receiver, so both can rely on it (and the client can run on
Windows with nothing Linux-only loaded).
"""

PROTOCOL_VERSION = "v1"
