"""``dittohead-admin``: one module per command, each with its parser beside its handler."""
