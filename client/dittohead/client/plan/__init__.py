"""What a send will carry, decided on the collector's PC before (and often instead of) any
connection: scan the folder (`scan`), leave out what the server already confirmed (`state`),
check the request (`job`), say where files will land (`layout`) and cut the rest into parts of
at most 1 GiB or 10,000 files, each its own upload (`batches`)."""
