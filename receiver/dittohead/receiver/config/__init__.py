"""The server's configuration: one YAML file, checked by `model` (pydantic), and the small
checked copy of it that ``dittohead-receive`` reads on each upload instead (`checked`)."""

from pathlib import Path

#: where the packages put the configuration, and where every command looks without --config
DEFAULT_CONFIG = Path("/etc/dittohead/dittohead.yaml")
