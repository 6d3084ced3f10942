"""The server side of dittohead: the receiver, the processor and the admin tool (Linux)."""
