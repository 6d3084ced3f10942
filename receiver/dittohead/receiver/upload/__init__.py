"""``dittohead-receive``: the program sshd runs as the collector for each upload.

receive (the entry point and its one catch site) → gate (may this connection upload?) →
tarread + stage (the tar stream into ``inbox/.<entry>/``, every name and byte checked) →
commit (durable, renamed to ``<entry>``, the processor poked, the receipt printed).
It runs with the collector's rights, so it is a courtesy, not a security boundary: the
processor checks everything again (docs/design.md, "Trust boundaries").
"""
