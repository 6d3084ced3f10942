"""``dittohead-notify``: mails the notices the processor queued (docs/design.md, "Notifications").

A program of its own, in a unit of its own, because it is the one part of the server that talks
to the network (to the mail relay only); the processor that writes the queue has none.
`queue` reads and marks the queue, `compose` turns notices into plain-text mails, `relay` speaks
SMTP, `cli` runs delivery rounds.
"""
