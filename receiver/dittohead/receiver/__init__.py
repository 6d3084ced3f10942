"""The server side of dittohead (Linux): two programs with two trust levels, the mailer, and
the admin tool.

- `upload/`: ``dittohead-receive``, run by sshd as the collector for each upload;
- `processor/`: ``dittohead-processor``, the service running as ``dittohead``;
- `notify/`: ``dittohead-notify``, which mails the notices the processor queued (its own unit,
  the only one with network, and only to the relay);
- `admin/`: ``dittohead-admin``, for admins and study runners;
- shared by them: `dropbox` (the folders and entry names they all agree on), `config` (the
  YAML file), `fsops` (file-system primitives relative to directory fds), `fscaps` (the
  fallbacks where a file system lacks a primitive), `fsmodes` (which file system lacks which,
  found at run time), `accounts` (users and groups through NSS), `service_cli` (the two
  services' command line).
"""
