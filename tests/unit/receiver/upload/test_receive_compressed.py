"""Compressed uploads end to end: the client's `Pack` with compression on, through the real
``dittohead-receive`` CLI (subprocess, temporary dropbox), and the compatibility of the
`` zstd`` flag in both directions (docs/protocol.md, "Compression")."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dittohead.client import deliver, squeeze
from dittohead.client.pack import Pack
from dittohead.client.plan.job import prepare
from dittohead.client.plan.scan import scan
from dittohead.client.transport import Answer, Progress, Server, openssh
from dittohead.core.errors import ProtocolError, UploadRejected
from dittohead.core.grammar import UploadRequest, parse_command
from dittohead.core.receipt import Receipt
from tests.hostile import recv_harness as h
from tests.hostile import streams as ts

LIMITS = {
    "max_files": 100,
    "max_file_bytes": 8 << 20,
    "max_upload_bytes": 20 << 20,
    "stall_timeout": 10,
    "min_free_bytes": 0,
}


def lab_files() -> dict[str, bytes]:
    """A compressible log, an incompressible file, a small file and an empty one."""
    log = "\n".join(f"Trial {i}\tRT: {300 + i % 97}\tACC: 1" for i in range(9000))
    return {
        "eprime/s01.txt": log.encode("utf-16"),  # ~0.5 MiB, shrinks ~10x
        "eyetracker/s01.edf": os.urandom(600 * 1024),  # never shrinks
        "notes/readme.txt": b"small " * 100,  # below squeeze.MIN_BYTES
        "empty.txt": b"",
    }


def write(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def stored(entry: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(entry)): p.read_bytes()
        for p in entry.rglob("*")
        if p.is_file() and ".dittohead" not in p.parts
    }


def test_a_compressed_upload_is_stored_byte_for_byte(tmp_path: Path) -> None:
    files = lab_files()
    write(tmp_path / "src", files)
    server = h.make_server(tmp_path / "srv", limits=LIMITS)
    pack = Pack(scan(tmp_path / "src"), compress=True)
    stream = b"".join(pack)
    # The log went compressed, the eyetracker file raw: the stream is much smaller than the
    # files, and what was saved is the log's shrinkage.
    assert pack.saved_bytes > 400_000
    assert len(stream) < sum(map(len, files.values())) - 400_000
    assert b"DITTOHEAD.zstd" in stream
    result = h.run(server, stream, ts.ZSTD_COMMAND)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    receipt = Receipt.from_json(result.stdout.decode())
    # The receipt counts the files' own bytes (the manifest's), not the wire's.
    assert (receipt.files, receipt.bytes) == (len(files), sum(map(len, files.values())))
    assert receipt.manifest_sha256 == pack.manifest_sha256
    assert stored(server.inbox() / receipt.upload) == files


def test_caps_count_decompressed_bytes(tmp_path: Path) -> None:
    """A file whose frame is tiny but whose bytes exceed max_file_bytes is refused like any
    over-cap file, and nothing is left behind."""
    write(tmp_path / "src", {"zeros.bin": bytes(2 << 20)})
    limits = {**LIMITS, "max_file_bytes": 1 << 20}
    server = h.make_server(tmp_path / "srv", limits=limits)
    pack = Pack(scan(tmp_path / "src"), compress=True)
    stream = b"".join(pack)
    assert len(stream) < 64 * 1024  # 2 MiB of zeros in a few KiB
    h.assert_refused(h.run(server, stream, ts.ZSTD_COMMAND), "max_file_bytes")
    assert server.entries() == []


def test_the_total_cap_counts_decompressed_bytes(tmp_path: Path) -> None:
    write(tmp_path / "src", {f"z{i}.bin": bytes(1 << 20) for i in range(3)})
    limits = {**LIMITS, "max_upload_bytes": (5 << 19)}  # 2.5 MiB
    server = h.make_server(tmp_path / "srv", limits=limits)
    stream = b"".join(Pack(scan(tmp_path / "src"), compress=True))
    h.assert_refused(h.run(server, stream, ts.ZSTD_COMMAND), "max_upload_bytes")
    assert server.entries() == []


def test_an_old_client_sends_as_before(tmp_path: Path) -> None:
    """No flag, no compressed member: the receiver never loads zstandard (the start-up
    budget test holds the import list; here the upload itself)."""
    files = lab_files()
    write(tmp_path / "src", files)
    server = h.make_server(tmp_path / "srv", limits=LIMITS)
    pack = Pack(scan(tmp_path / "src"))
    stream = b"".join(pack)
    assert b"DITTOHEAD.zstd" not in stream
    result = h.run(server, stream, ts.COMMAND)
    assert result.returncode == 0, result.stderr
    receipt = Receipt.from_json(result.stdout.decode())
    assert stored(server.inbox() / receipt.upload) == files


def test_the_flag_round_trips_in_the_grammar() -> None:
    request = UploadRequest(ts.STUDY, ts.SOURCE, compress=True)
    assert request.command() == ts.ZSTD_COMMAND
    assert parse_command(request.command()) == request
    assert parse_command(ts.COMMAND) == UploadRequest(ts.STUDY, ts.SOURCE)
    assert not parse_command(ts.COMMAND).compress


# -- a new client and a server from before the flag -------------------------------------------

# The receiver as it was before the flag: the same program with the v1 grammar's old pattern
# (exactly what an older install answers to the flag, which is the point of the test).
OLD_RECEIVER = (
    "import re, sys\n"
    "from dittohead.core import grammar\n"
    "grammar._UPLOAD_RE = re.compile(r'dittohead upload (?P<version>v[0-9]{1,3}) '\n"
    "    r'(?P<study>[a-z0-9][a-z0-9_-]{0,31}) (?P<source>[A-Za-z0-9][A-Za-z0-9._-]{0,63})'\n"
    "    r'(?P<flag>(?!))?')\n"
    "from dittohead.receiver.upload.receive import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


class ReceiverPipe:
    """A transport that hands the stream to a receiver subprocess, as sshd would (SSH itself
    is not what these tests are about: the real sshd carries uploads in tests/integration)."""

    program = "receiver-pipe"  # what deliver logs for an OpenSSH session

    def __init__(self, server: h.Server, request: UploadRequest, *, old: bool) -> None:
        self.server, self.request, self.old = server, request, old

    def carry(
        self, pack: Pack, *, progress: Progress | None, streamed: Callable[[], None]
    ) -> Answer:
        argv = [sys.executable, "-I", "-c", OLD_RECEIVER] if self.old else [str(h.RECEIVE)]
        done = subprocess.run(
            [*argv, "--config", str(self.server.config)],
            input=b"".join(pack),
            capture_output=True,
            env=h.receiver_env(self.request.command()),
            timeout=60,
            check=False,
        )
        if done.returncode == 0:
            streamed()
        return Answer(done.stdout, done.stderr, done.returncode)


@pytest.mark.parametrize("old", [True, False], ids=["old-server", "new-server"])
def test_a_new_client_falls_back_once_when_the_server_predates_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: bool
) -> None:
    files = lab_files()
    write(tmp_path / "src", files)
    server = h.make_server(tmp_path / "srv", limits=LIMITS)
    commands: list[str] = []

    def start(_server: Server, request: UploadRequest) -> ReceiverPipe:
        commands.append(request.command())
        return ReceiverPipe(server, request, old=old)

    monkeypatch.setattr(openssh, "start", start)
    monkeypatch.setenv(squeeze.ENV, "1")
    job = prepare(
        Server("lab-server.example", user="alice"),
        study=ts.STUDY,
        source=ts.SOURCE,
        folder=tmp_path / "src",
        state=tmp_path / "state.json",
    )
    assert job.request.compress
    receipt = deliver.run(job)
    assert commands == ([ts.ZSTD_COMMAND, ts.COMMAND] if old else [ts.ZSTD_COMMAND])
    assert stored(server.inbox() / receipt.upload) == files


def test_other_refusals_are_not_retried_without_compression(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the old server's words for the flag lead to a second try: a server that knows the
    flag and refuses the upload for another reason is asked once."""
    write(tmp_path / "src", lab_files())
    server = h.make_server(tmp_path / "srv", limits=LIMITS)
    commands: list[str] = []

    def start(_server: Server, request: UploadRequest) -> ReceiverPipe:
        commands.append(request.command())
        return ReceiverPipe(server, request, old=False)

    monkeypatch.setattr(openssh, "start", start)
    monkeypatch.setenv(squeeze.ENV, "1")
    job = prepare(
        Server("lab-server.example", user="alice"),
        study="nosuch",
        source=ts.SOURCE,
        folder=tmp_path / "src",
        state=tmp_path / "state.json",
    )
    with pytest.raises(UploadRejected, match="no study 'nosuch'"):
        deliver.run(job)
    assert commands == [f"dittohead upload v1 nosuch {ts.SOURCE} zstd"]


def test_only_the_old_grammar_words_count_as_not_knowing_the_flag() -> None:
    old = "malformed upload request; expected 'dittohead upload v1 <study> <station>' (...)"
    assert deliver.refuses_compression(ProtocolError(old))
    assert not deliver.refuses_compression(ProtocolError("protocol version v1 is not supported"))
    assert not deliver.refuses_compression(ProtocolError("this is not an upload request"))
