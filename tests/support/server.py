"""Server-side fixtures shared by the tiers: a temporary dropbox, study tree and config, and a
builder of committed inbox entries (what the receiver leaves behind, made by hand so that the
processor can be tested alone and hostile entries can be built the same way)."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from dittohead.receiver.admin.init_cmd import init
from dittohead.receiver.config.checked import UploadLimits, check_config
from dittohead.receiver.config.model import Config, Limits
from tests.support.invariants import dropbox_problems, sent_problems, tree_problems

STUDY = "nccam3"


def upload_limits(**changes: Any) -> UploadLimits:
    """The receiver's limits of a configuration whose ``limits`` are the defaults but `changes`."""
    return UploadLimits.from_limits(Limits(**changes))


@dataclass
class Server:
    base: Path
    config_path: Path
    config: Config

    @property
    def inbox(self) -> Path:
        return self.config.study_dir(STUDY) / "inbox"

    @property
    def destination(self) -> Path:
        return self.config.study(STUDY).destination

    def entry_name(self, source: str = "brogden-a") -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return f"{source}-{stamp}-{secrets.token_hex(8)}"

    def commit(
        self, files: dict[str, bytes], *, source: str = "brogden-a", manifest: Any = None
    ) -> str:
        """Stage `files` as an entry with a correct manifest (unless given) and commit it."""
        name = self.entry_name(source)
        staging = self.inbox / f".{name}"
        staging.mkdir(mode=0o2770)
        for rel, data in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if manifest is None:
            entries = [
                {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                for rel, data in files.items()
            ]
            manifest = {
                "files": len(entries),
                "bytes": sum(e["size"] for e in entries),
                "entries": entries,
            }
        meta = staging / ".dittohead"
        meta.mkdir()
        data = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        (meta / "manifest.json").write_bytes(data)
        os.rename(staging, self.inbox / name)
        return name

    def problems(self, sent: dict[str, set[bytes]]) -> list[str]:
        """Every invariant of tests.support.invariants for this study, in words (empty: all
        hold): tree and ledger agree, every content `sent` is stored once, nothing half-done."""
        return (
            tree_problems(self.destination)
            + sent_problems(self.destination, sent)
            + dropbox_problems(
                self.config.study_dir(STUDY), self.config.state_dir, self.destination
            )
        )


def config_doc(
    base: Path, user: str, studies: dict[str, tuple[Path, list[str]]], **extra: Any
) -> dict[str, Any]:
    """A server configuration with everything under `base` (one shape for every test tier).

    `studies` maps a study name to its destination and uploader groups; `extra` adds top-level
    keys (``limits``, ``processor``).
    """
    return {
        "dropbox": str(base / "dropbox"),
        "socket": str(base / "run" / "processor.sock"),
        "state_dir": str(base / "state"),
        "user": user,
        "sources": {"brogden-a": "Brogden A"},
        "studies": {
            name: {"destination": str(dest), "uploaders": groups}
            for name, (dest, groups) in studies.items()
        },
        **extra,
    }


def write_config(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o644)  # the receiver reads it as the collector


def make_server(base: Path, **limits: Any) -> Server:
    """A dropbox and destination under `base`, set up by `dittohead-admin init`.

    The uploaders' group is the caller's own primary group, so entries the test creates are
    accepted; tests about foreign owners use the sshd tier's real users.
    """
    group = grp.getgrgid(os.getgid()).gr_name
    (base / "study").mkdir(parents=True)
    extra = {"limits": limits} if limits else {}
    doc = config_doc(base, "root", {STUDY: (base / "study" / "raw", [group])}, **extra)
    path = base / "dittohead.yaml"
    write_config(path, doc)
    config = check_config(path)  # as `dittohead-admin init` does: writes the checked copy
    init(config)
    return Server(base, path, config)
