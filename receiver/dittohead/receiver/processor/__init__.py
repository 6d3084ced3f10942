"""``dittohead-processor``: the service, running as ``dittohead``, that finalizes uploads.

service (command line, socket activation, systemd notifications) → finalize (one pass over
every study) → claim (an entry out of the inbox, by file descriptor) → verify (walk it without
trust, copy and hash every byte) → publish (into the study tree, never overwriting) → ledger
(one hash-chained record per file); journal (crash safety) and janitor (abandoned staging
entries) beside them. It is the security boundary (docs/design.md, "Trust boundaries").
"""
