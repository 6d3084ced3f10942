"""Which files travel compressed: the per-file decision from a sample, the host rule, and what
the stream then carries (docs/protocol.md, "Compression")."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import pytest

from dittohead.client import squeeze
from dittohead.client.pack import Pack
from dittohead.client.plan.scan import scan


def utf16_log(size: int) -> bytes:
    lines = (f"Trial {i}\tStim: face{i % 40}.bmp\tRT: {250 + i * 7 % 400}" for i in range(size))
    return "\n".join(lines).encode("utf-16")[:size]


def int16_signal(size: int) -> bytes:
    """Samples of a slow wave with a noisy low byte, as an amplifier writes them."""
    noise = os.urandom(size // 2)
    out = bytearray(size)
    for i in range(size // 2):
        value = (100 + (i // 50) % 50) * 256 + noise[i] % 16
        out[2 * i : 2 * i + 2] = value.to_bytes(2, "little")
    return bytes(out)


@pytest.mark.parametrize(
    ("host", "wanted"),
    [
        ("127.0.0.1", False),
        ("127.1.2.3", False),
        ("::1", False),
        ("[::1]", False),
        ("localhost", False),
        ("LOCALHOST", False),
        ("x.localhost", False),
        ("10.0.0.2", True),
        ("lab-server.example.edu", True),
        ("fe80::1", True),
    ],
)
def test_compression_is_asked_for_unless_the_server_is_this_machine(
    host: str, wanted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(squeeze.ENV, raising=False)
    assert squeeze.wanted(host) is wanted


def test_the_environment_overrides_the_host_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(squeeze.ENV, "1")
    assert squeeze.wanted("127.0.0.1")
    monkeypatch.setenv(squeeze.ENV, "0")
    assert not squeeze.wanted("lab-server.example.edu")
    monkeypatch.setenv(squeeze.ENV, "yes")  # not a recognised value: the host rule
    assert squeeze.wanted("lab-server.example.edu")


@pytest.mark.parametrize(
    ("sample", "pays"),
    [
        (utf16_log(64 * 1024), True),
        (int16_signal(64 * 1024), True),
        (bytes(64 * 1024), True),
        (os.urandom(64 * 1024), False),
        (b"", False),
    ],
    ids=["utf16-log", "int16-signal", "zeros", "random", "empty"],
)
def test_the_sample_decides(sample: bytes, pays: bool) -> None:
    assert squeeze.Squeeze().pays(memoryview(sample)) is pays


def test_only_mid_sized_files_are_candidates() -> None:
    assert not squeeze.candidate(squeeze.MIN_BYTES - 1)
    assert squeeze.candidate(squeeze.MIN_BYTES)
    assert squeeze.candidate(squeeze.MAX_BYTES)
    assert not squeeze.candidate(squeeze.MAX_BYTES + 1)


def members_of(stream: bytes) -> dict[str, dict[str, str]]:
    """Each file member's pax records (tarfile reads our headers fine)."""
    with tarfile.open(fileobj=BytesIO(stream), mode="r:") as tar:
        return {m.name: dict(m.pax_headers) for m in tar.getmembers() if m.isfile()}


def test_the_stream_compresses_what_shrinks_and_sends_the_rest_raw(tmp_path: Path) -> None:
    files = {
        "log.txt": utf16_log(600 * 1024),
        "signal.bin": int16_signal(400 * 1024),
        "eyetracker.edf": os.urandom(300 * 1024),
        # shrinks in its first 64 KiB, not as a whole: raw after all
        "mixed.bin": bytes(64 * 1024) + os.urandom(2 << 20),
        "small.txt": utf16_log(4096),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    pack = Pack(scan(tmp_path), compress=True)
    stream = b"".join(pack)
    compressed = {name for name, pax in members_of(stream).items() if "DITTOHEAD.zstd" in pax}
    assert compressed == {"log.txt", "signal.bin"}
    assert members_of(stream)["log.txt"]["DITTOHEAD.zstd"] == str(len(files["log.txt"]))
    # The manifest lists the files' own sizes and hashes, and progress counted each byte once.
    listed = {e.path: e.size for e in pack.manifest.entries}
    assert listed == {name: len(data) for name, data in files.items()}
    assert pack.bytes_done == sum(map(len, files.values()))
    with tarfile.open(fileobj=BytesIO(stream)) as tar:
        wire = sum(m.size for m in tar.getmembers() if m.isfile()) - len(pack.manifest_json)
    assert 0 < pack.saved_bytes == sum(map(len, files.values())) - wire


def test_without_compression_the_stream_is_as_before(tmp_path: Path) -> None:
    (tmp_path / "log.txt").write_bytes(utf16_log(600 * 1024))
    plain = b"".join(Pack(scan(tmp_path), now=1))
    assert b"DITTOHEAD.zstd" not in plain
    assert plain == b"".join(Pack(scan(tmp_path), now=1, compress=False))


def test_zstandard_is_loaded_only_for_a_candidate_file(tmp_path: Path) -> None:
    """A send of small files (or of nothing that could shrink) never imports zstandard."""
    (tmp_path / "small.txt").write_bytes(b"x" * 1000)
    probe = (
        "import sys\n"
        "from dittohead.client.pack import Pack\n"
        "from dittohead.client.plan.scan import scan\n"
        f"b''.join(Pack(scan({str(tmp_path)!r}), compress=True))\n"
        "print('zstandard' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_level_paces_itself() -> None:
    """Harder while the send waits for the link, faster while compressing dominates, never
    judged on less than PACE_SECONDS, and within LEVELS."""
    sq = squeeze.Squeeze()
    assert sq.level == squeeze.LEVELS[squeeze.START]
    start = sq._since
    sq.pace(0.01, now=start + 0.1)  # too short to judge
    assert sq.level == squeeze.LEVELS[squeeze.START]
    t = start + 0.3
    sq.pace(0.0, now=t)  # 0.01 of 0.3 s compressing: the link is the limit
    assert sq.level == squeeze.LEVELS[squeeze.START + 1]
    for _ in range(10):
        t += 1.0
        sq.pace(0.05, now=t)
    assert sq.level == squeeze.LEVELS[-1]
    for _ in range(10):
        t += 1.0
        sq.pace(0.9, now=t)  # compressing most of the time: the compressor is the limit
    assert sq.level == squeeze.LEVELS[0]
    t += 1.0
    sq.pace(0.45, now=t)  # in between: stays
    assert sq.level == squeeze.LEVELS[0]
