"""The server side of dittohead (Linux): two programs with two trust levels, and the admin tool.

- `upload/`: ``dittohead-receive``, run by sshd as the collector for each upload;
- `processor/`: ``dittohead-processor``, the service running as ``dittohead``;
- `admin/`: ``dittohead-admin``, for admins and study runners;
- shared by them: `dropbox` (the folders and entry names all three agree on), `config` (the
  YAML file), `fsops` (file-system primitives relative to directory fds), `accounts` (users
  and groups through NSS).
"""
