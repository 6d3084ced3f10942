"""Hostile uploads for the receiver: a checked-in generator of named streams.

Every row of docs/design.md's "Tar header fields" table and every case of the command grammar
has at least one stream here, with the fragment its ``dittohead: ...`` error line must contain.
The tar pieces are built by hand (most of these are things `tarfile` refuses to write), so this
module also serves the unit tests as a small tar *writer* for odd headers.

Run it to write the streams out for use against a real server::

    python tests/hostile/streams.py OUTDIR [CANARY_DIR]

writes ``OUTDIR/<name>.tar``, ``<name>.command`` and ``<name>.expect`` per stream.
"""

from __future__ import annotations

import hashlib
import json
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

BLOCK = 512
RECORD = 10240
POSIX_MAGIC = b"ustar\x0000"
GNU_MAGIC = b"ustar  \x00"
STUDY = "alpha"
CLOSED_STUDY = "closed"  # in the config, but the test runner is not an uploader
SOURCE = "st-1"
COMMAND = f"dittohead upload v1 {STUDY} {SOURCE}"
#: the same upload asking for compressed members (docs/protocol.md, "Compression")
ZSTD_COMMAND = f"{COMMAND} zstd"
ZSTD_KEY = "DITTOHEAD.zstd"
MANIFEST = ".dittohead/manifest.json"

#: the limits the hostile streams are built against (the test config must use these)
LIMITS = {
    "max_files": 8,
    "max_file_bytes": 64 * 1024,
    "max_upload_bytes": 160 * 1024,
    "stall_timeout": 10,
    "min_free_bytes": 0,
}


def _b(text: str | bytes) -> bytes:
    return text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def header(
    name: str | bytes,
    *,
    kind: bytes = b"0",
    size: int = 0,
    prefix: str | bytes = b"",
    magic: bytes = POSIX_MAGIC,
    linkname: str | bytes = b"",
    size_field: bytes | None = None,
    checksum_delta: int = 0,
) -> bytes:
    """One 512-byte tar header with a correct checksum (unless `checksum_delta` spoils it)."""
    block = bytearray(BLOCK)
    block[0:100] = _b(name)[:100].ljust(100, b"\0")
    block[100:108] = _octal(0o644 if kind != b"5" else 0o755, 8)
    block[108:116] = _octal(1000, 8)
    block[116:124] = _octal(1000, 8)
    block[124:136] = size_field if size_field is not None else _octal(size, 12)
    block[136:148] = _octal(1_700_000_000, 12)
    block[148:156] = b" " * 8
    block[156:157] = kind
    block[157:257] = _b(linkname)[:100].ljust(100, b"\0")
    block[257:265] = magic
    block[265:297] = b"someone".ljust(32, b"\0")
    block[297:329] = b"somegroup".ljust(32, b"\0")
    block[345:500] = _b(prefix)[:155].ljust(155, b"\0")
    assert len(block) == BLOCK, "a field overflowed its width"
    checksum = sum(block) + checksum_delta
    block[148:156] = b"%06o\0 " % checksum
    return bytes(block)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: str | bytes, data: bytes = b"", **kw: object) -> bytes:
    return header(name, size=len(data), **kw) + pad(data)  # type: ignore[arg-type]


def folder(name: str | bytes) -> bytes:
    return header(name, kind=b"5")


def pax_record(key: str | bytes, value: str | bytes) -> bytes:
    body = b" " + _b(key) + b"=" + _b(value) + b"\n"
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length += 1
    return str(length).encode() + body


def pax(records: Iterable[tuple[str | bytes, str | bytes]], *, glob: bool = False) -> bytes:
    data = b"".join(pax_record(k, v) for k, v in records)
    return raw_ext(data, kind=b"g" if glob else b"x")


def raw_ext(data: bytes, *, kind: bytes = b"x") -> bytes:
    name = b"pax_global_header" if kind == b"g" else b"PaxHeaders/member"
    return header(name, kind=kind, size=len(data)) + pad(data)


def longname(name: str | bytes) -> bytes:
    data = _b(name) + b"\0"
    return header(b"././@LongLink", kind=b"L", size=len(data), magic=GNU_MAGIC) + pad(data)


def end(trailer: bytes = b"") -> bytes:
    """Two zero blocks, padded to tar's 10 KiB record, then `trailer`."""
    return bytes(2 * BLOCK) + trailer


def manifest_json(files: Sequence[tuple[str, bytes]]) -> bytes:
    entries: list[dict[str, str | int]] = [
        {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for path, data in files
    ]
    total = sum(len(data) for _, data in files)
    doc = {"files": len(entries), "bytes": total, "entries": entries}
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def upload(
    files: Sequence[tuple[str, bytes]],
    *,
    body: bytes | None = None,
    manifest: bytes | None = None,
    after: bytes = b"",
    trailer: bytes = bytes(RECORD - 3 * BLOCK),
) -> bytes:
    """A complete upload: `files` (or a raw `body`), the manifest of `files`, end, trailer."""
    if body is None:
        body = b"".join(member(path, data) for path, data in files)
    listed = manifest if manifest is not None else manifest_json(files)
    return body + member(MANIFEST, listed) + after + end(trailer)


def with_manifest(body: bytes, files: Sequence[tuple[str, bytes]] = ()) -> bytes:
    """A hand-made `body` followed by a manifest that lists `files`."""
    return upload(files, body=body)


@dataclass(frozen=True)
class Hostile:
    name: str
    stream: bytes
    expect: str  # fragment of the one error line
    row: str  # the docs/design.md "Tar header fields" row (or grammar case) this stands for
    command: str | None = COMMAND


def _grammar() -> list[Hostile]:
    ok = upload([("a.txt", b"a")])
    cases = [
        ("cmd-unset", None, "no command was given"),
        ("cmd-empty", "", "no command was given"),
        ("cmd-shell", "sh", "only accepts uploads from the dittohead client"),
        ("cmd-internal-sftp", "internal-sftp", "only accepts uploads from the dittohead client"),
        ("cmd-sftp-server", "/usr/lib/openssh/sftp-server", "use 'dittohead send'"),
        ("cmd-scp", "scp -t /tmp", "use 'dittohead send'"),
        ("cmd-rsync", "rsync --server -e.LsfxC . /tmp", "use 'dittohead send'"),
        ("cmd-double-space", f"dittohead upload v1  {STUDY} {SOURCE}", "malformed upload request"),
        ("cmd-semicolon", f"{COMMAND}; rm -rf ~", "malformed upload request"),
        ("cmd-subshell", f"dittohead upload v1 $(id) {SOURCE}", "malformed upload request"),
        ("cmd-newline", f"{COMMAND}\n", "malformed upload request"),
        ("cmd-version-v2", f"dittohead upload v2 {STUDY} {SOURCE}", "version v2 is not supported"),
        ("cmd-unknown-flag", f"{COMMAND} gzip", "malformed upload request"),
        ("cmd-flag-twice", f"{ZSTD_COMMAND} zstd", "malformed upload request"),
        ("cmd-unknown-study", f"dittohead upload v1 nosuch {SOURCE}", "no study 'nosuch'"),
        (
            "cmd-study-not-allowed",
            f"dittohead upload v1 {CLOSED_STUDY} {SOURCE}",
            f"not an uploader for study '{CLOSED_STUDY}'",
        ),
    ]
    return [Hostile(name, ok, expect, "command grammar", cmd) for name, cmd, expect in cases]


def _names(canary: str) -> list[Hostile]:
    row = "absolute, .., empty or . component"
    nfc, nfd = unicodedata.normalize("NFC", "café.txt"), unicodedata.normalize("NFD", "café.txt")
    one = [("x.txt", b"x")]
    cases: list[tuple[str, bytes, str, str]] = [
        ("abs-canary", member(f"{canary}/evil", b"x"), "absolute path", row),
        ("dotdot-canary", member("../../../../canary/evil", b"x"), "'..' path component", row),
        ("dotdot-inner", member("a/../../canary/evil", b"x"), "'..' path component", row),
        ("dot-component", member("a/./b", b"x"), "'.' path component", row),
        ("empty-component", member("a//b", b"x"), "empty path component", row),
        ("empty-name", member("", b"x"), "it is empty", row),
        ("root-dir-member", folder("./"), "'.' path component", row),
        ("nul-in-pax-path", pax([("path", "a\0b")]) + member("ab", b"x"), "NUL", "NUL"),
        ("control-char", member("a\x01b", b"x"), "control character", "control characters"),
        ("backslash", member("a\\..\\evil", b"x"), "backslash", "backslash"),
        ("non-utf8", member(b"caf\xe9.txt", b"x"), "not valid UTF-8", "non-UTF-8 bytes"),
        (
            "path-too-long",
            pax([("path", "a/" * 520 + "x")]) + member("x", b"x"),
            "1024 bytes",
            "path > 1024 bytes",
        ),
        (
            "component-too-long",
            pax([("path", "y" * 256)]) + member("x", b"x"),
            "255 bytes",
            "component > 255 bytes",
        ),
        ("too-deep", member("d/" * 32 + "x", b"x"), "deeper than 32", "depth > 32"),
        (
            "duplicate",
            member("a.txt", b"1") + member("a.txt", b"2"),
            "appears twice",
            "duplicate names",
        ),
        (
            "case-collision",
            member("A.txt", b"1") + member("a.txt", b"2"),
            "same file as",
            "collide on Windows",
        ),
        (
            "nfc-nfd-collision",
            member(nfc, b"1") + member(nfd, b"2"),
            "same file as",
            "collide on Windows",
        ),
        (
            "file-then-dir",
            member("a", b"1") + member("a/b", b"2"),
            "both as a file and",
            "file later used as a directory",
        ),
        (
            "dir-then-file",
            folder("d/") + member("d", b"2"),
            "both as a file and",
            "file later used as a directory",
        ),
        ("windows-device", member("CON", b"x"), "reserved device name", "not portable"),
        ("windows-device-ext", member("d/com1.txt", b"x"), "reserved device name", "not portable"),
        ("windows-colon", member("a:b", b"x"), "Windows does not allow", "not portable"),
        ("trailing-dot", member("name.", b"x"), "ends with a dot or a space", "not portable"),
        ("trailing-space", member("name ", b"x"), "ends with a dot or a space", "not portable"),
        (
            "gnu-longname-escape",
            longname("../../../canary/evil") + member("x", b"x"),
            "'..' path component",
            "GNU longname applied",
        ),
        (
            "ustar-prefix-escape",
            member("evil", b"x", prefix="../../../canary"),
            "'..' path component",
            "ustar prefix applied",
        ),
        (
            "pax-path-absolute",
            pax([("path", f"{canary}/evil")]) + member("x", b"x"),
            "absolute path",
            "pax path applied",
        ),
        (
            "pax-global-escape",
            pax([("path", "../canary/evil")], glob=True) + member("x", b"x"),
            "'..' path component",
            "global pax headers applied",
        ),
        (
            "reserved-other",
            member(".dittohead/evil.json", b"{}"),
            "may only hold",
            "reserved folder",
        ),
        (
            "reserved-case",
            member(".DittoHead/manifest.json", b"{}"),
            "may only hold",
            "reserved folder",
        ),
    ]
    return [Hostile(n, with_manifest(body, one), exp, r) for n, body, exp, r in cases]


def _types(canary: str) -> list[Hostile]:
    row = "symlink, hard link, device, FIFO, contiguous, sparse, multi-volume, unknown types"
    one = [("x.txt", b"x")]
    cases = [
        ("symlink", header("link", kind=b"2", linkname=canary), "symbolic link"),
        (
            "symlink-then-through",
            header("link", kind=b"2", linkname=canary) + member("link/evil", b"x"),
            "symbolic link",
        ),
        ("hardlink", header("hard", kind=b"1", linkname="/etc/passwd"), "hard link"),
        ("chardev", header("tty", kind=b"3"), "character device"),
        ("blockdev", header("sda", kind=b"4"), "block device"),
        ("fifo", header("pipe", kind=b"6"), "FIFO"),
        ("contiguous", member("c.bin", b"x", kind=b"7"), "contiguous file"),
        ("gnu-sparse", header("s.bin", kind=b"S", magic=GNU_MAGIC), "sparse file"),
        (
            "pax-sparse",
            pax([("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0")]) + member("s.bin", b"x"),
            "sparse file",
        ),
        ("multivolume", header("m.bin", kind=b"M", magic=GNU_MAGIC), "multi-volume"),
        ("volume-label", header("label", kind=b"V", magic=GNU_MAGIC), "volume label"),
        ("dumpdir", header("d", kind=b"D", magic=GNU_MAGIC), "dump directory"),
        (
            "gnu-longlink",
            header("././@LongLink", kind=b"K", size=0, magic=GNU_MAGIC) + member("x", b"x"),
            "long link",
        ),
        ("unknown-type", header("u", kind=b"Z"), "unknown tar member type"),
    ]
    return [Hostile(n, with_manifest(body, one), exp, row) for n, body, exp in cases]


def _sizes() -> list[Hostile]:
    row = "size: 0 <= size <= cap, checked before reading data"
    cap = LIMITS["max_file_bytes"]
    negative = b"\xff" + b"\xff" * 10 + b"\xf0"  # base-256 -16
    chunk = b"z" * (60 * 1024)
    many = [(f"f{i}.txt", b"%d" % i) for i in range(LIMITS["max_files"] + 1)]
    return [
        # The cap must be checked from the header: no data follows, so reading it first would
        # report an incomplete upload instead of the limit.
        Hostile("size-over-cap-no-data", header("big.bin", size=cap + 1), "max_file_bytes", row),
        Hostile(
            "size-huge-base256",
            header("big.bin", size_field=b"\x80" + b"\0" * 4 + b"\x01" + b"\0" * 6),
            "max_file_bytes",
            row,
        ),
        Hostile(
            "size-negative",
            with_manifest(header("neg.bin", size_field=negative)),
            "negative size",
            row,
        ),
        Hostile(
            "pax-size-over-cap",
            pax([("size", str(10 * cap))]) + header("p.bin"),
            "max_file_bytes",
            row,
        ),
        Hostile(
            "pax-size-not-number",
            with_manifest(pax([("size", "12abc")]) + member("p", b"")),
            "is not a number",
            row,
        ),
        Hostile(
            "total-over-cap",
            upload([("a", chunk), ("b", chunk), ("c", chunk)]),
            "max_upload_bytes",
            "limits: total bytes",
        ),
        Hostile("too-many-files", upload(many), "max_files", "limits: file count"),
        Hostile(
            "manifest-too-large",
            header(MANIFEST, size=1 << 20),
            "manifest larger than",
            "limits: manifest",
        ),
    ]


def _framing() -> list[Hostile]:
    row = "truncated stream, garbage after a member, bytes other than NUL after end-of-archive"
    files = [("a.txt", b"hello"), ("b/c.txt", b"world")]
    good = upload(files)
    head = member("a.txt", b"hello")
    tail = len(end(bytes(RECORD - 3 * BLOCK)))  # what follows the manifest in `good`
    return [
        Hostile("empty-stream", b"", "the connection ended early", row),
        Hostile("truncated-in-header", good[:1100], "the connection ended early", row),
        Hostile(
            "truncated-in-data",
            header("a.txt", size=5000) + b"x" * 100,
            "the connection ended early",
            row,
        ),
        Hostile(
            "truncated-before-end", good[: len(good) - tail], "the connection ended early", row
        ),
        Hostile(
            "one-end-block-only",
            good[: len(good) - tail + BLOCK],
            "the connection ended early",
            row,
        ),
        Hostile("no-manifest", head + end(), "has no manifest", row),
        Hostile(
            "manifest-not-last",
            member(MANIFEST, manifest_json([])) + head + end(),
            "must be the last member",
            row,
        ),
        Hostile("manifest-as-folder", with_manifest(folder(MANIFEST + "/")), "may only hold", row),
        Hostile(
            "manifest-not-json", upload(files, manifest=b"{not json"), "manifest is not valid", row
        ),
        Hostile(
            "manifest-missing-file",
            upload(files[:1], manifest=manifest_json(files)),
            "did not arrive",
            row,
        ),
        Hostile(
            "manifest-unlisted-file",
            upload(files, manifest=manifest_json(files[:1])),
            "not listed",
            row,
        ),
        Hostile(
            "manifest-wrong-size",
            upload(files, manifest=manifest_json([("a.txt", b"hello!"), files[1]])),
            "manifest does not match",
            row,
        ),
        Hostile(
            "manifest-wrong-sha",
            upload(files, manifest=manifest_json([("a.txt", b"HELLO"), files[1]])),
            "manifest does not match",
            row,
        ),
        Hostile(
            "garbage-padding",
            with_manifest(
                header("a.txt", size=5) + b"hello" + b"junk" + bytes(BLOCK - 9),
                [("a.txt", b"hello")],
            ),
            "stray bytes",
            row,
        ),
        Hostile(
            "garbage-after-end",
            upload(files, trailer=bytes(100) + b"rm -rf /"),
            "after the end of the archive",
            row,
        ),
        Hostile(
            "member-after-end",
            upload(files, trailer=member("late.txt", b"x")),
            "after the end of the archive",
            row,
        ),
        Hostile(
            "too-much-trailing",
            upload(files, trailer=bytes(2 * 1024 * 1024)),
            "follow the end of the archive",
            row,
        ),
        Hostile(
            "not-a-tar",
            b"PK\x03\x04" + bytes(2000),
            "malformed archive",
            "any exception from tarfile",
        ),
        Hostile(
            "bad-checksum",
            with_manifest(header("a.txt", checksum_delta=1)),
            "malformed archive",
            "any exception from tarfile",
        ),
        Hostile(
            "bad-number-field",
            with_manifest(header("a.txt", size_field=b"12345678901z")),
            "malformed archive",
            "any exception from tarfile",
        ),
        Hostile(
            "v7-header",
            with_manifest(header("a.txt", magic=bytes(8))),
            "malformed archive",
            "any exception from tarfile",
        ),
        Hostile(
            "pax-bad-length",
            with_manifest(raw_ext(b"99 path=x\n") + member("x")),
            "wrong length",
            "pax parsed strictly",
        ),
        Hostile(
            "pax-no-equals",
            with_manifest(raw_ext(b"8 pathx\n") + member("x")),
            "not key=value",
            "pax parsed strictly",
        ),
        Hostile(
            "pax-too-large",
            with_manifest(raw_ext(pax_record("comment", "c" * 70000)) + member("x")),
            "extended header is larger",
            "pax parsed strictly",
        ),
        Hostile(
            "pax-then-end",
            pax([("path", "x")]) + end(),
            "not followed by a member",
            "pax parsed strictly",
        ),
        Hostile(
            "pax-global-flood",
            with_manifest(pax([("comment", "x")], glob=True) * 17),
            "global headers",
            "pax parsed strictly",
        ),
        Hostile(
            "folder-with-data",
            with_manifest(header("d", kind=b"5", size=10) + pad(b"x" * 10)),
            "carries data",
            "members are folders and files only",
        ),
    ]


def zstd_frame(data: bytes, *, level: int = 3, window_log: int = 0, size: bool = True) -> bytes:
    """One zstd frame of `data` (`window_log` set: a frame that asks the decoder for that
    window; `size` False: no decompressed size in the frame's header)."""
    import zstandard

    if window_log:
        params = zstandard.ZstdCompressionParameters.from_level(
            level, window_log=window_log, write_content_size=int(size)
        )
        compressor = zstandard.ZstdCompressor(compression_params=params)
    else:
        compressor = zstandard.ZstdCompressor(level=level, write_content_size=size)
    if size:
        return compressor.compress(data)
    obj = compressor.compressobj()
    return obj.compress(data) + obj.flush()


def zmember(name: str, frame: bytes, raw_size: int | str) -> bytes:
    """A compressed member: the pax record with the file's size, then the frame as its data."""
    return pax([(ZSTD_KEY, str(raw_size))]) + member(name, frame)


def _compression() -> list[Hostile]:
    cap = LIMITS["max_file_bytes"]
    row = "compression bombs: every cap on the decompressed bytes"
    bomb = zstd_frame(bytes(64 << 20))  # 64 MiB of zeros in about 2 KiB
    small = b"small data " * 100
    n = len(small)
    near_cap = zstd_frame(bytes(cap - 1))
    half = zstd_frame(small)
    garbage = bytes(range(256)) * 4
    wide = zstd_frame(small, window_log=30, size=False)
    listed = manifest_json([])
    over_total = b"".join(zmember(f"f{i}.bin", near_cap, cap - 1) for i in range(3))
    over_count = b"".join(zmember(f"f{i}.bin", half, n) for i in range(LIMITS["max_files"] + 1))
    split = zmember("a.bin", half[:20], n) + zmember("b.bin", half[20:], n)
    cases = [
        # Refused from the pax record alone, before a byte of the frame is read.
        ("zstd-declares-over-file-cap", zmember("big.bin", bomb, cap + 1), "max_file_bytes"),
        # A tiny frame that says it is small and expands past the cap (and past what it said).
        ("zstd-bomb-lies-small", zmember("b.bin", bomb, 4000), "decompresses to more than"),
        # A frame whose own header is right, followed by a second one that expands further.
        ("zstd-second-frame-expands", zmember("b.bin", half + bomb, len(half + bomb)), "more than"),
        # Each member within the file cap, together past the upload's total or file count.
        ("zstd-total-over-cap", over_total, "max_upload_bytes"),
        ("zstd-too-many-files", over_count, "max_files"),
        ("zstd-garbage-frame", zmember("g.bin", garbage, 5000), "not valid zstd data"),
        ("zstd-truncated-frame", zmember("t.bin", half[:-7], n), "decompresses to"),
        # A frame split across two members: neither half is a frame of its own.
        ("zstd-frame-split-across-members", split, "decompresses to"),
        ("zstd-shorter-than-declared", zmember("s.bin", half, n + 100), f"not the {n + 100} its"),
        # A frame asking for a 1 GiB window (no content size to shrink it to): the decoder's
        # memory is capped at 8 MiB.
        ("zstd-huge-window", zmember("w.bin", wide, n), "not valid zstd data"),
        ("zstd-wire-larger-than-file", zmember("l.bin", half, len(half) - 1), "must be smaller"),
        ("zstd-size-not-number", zmember("n.bin", half, "1e6"), "is not a number"),
        ("zstd-in-global-header", pax([(ZSTD_KEY, "10")], glob=True), "global header"),
        ("zstd-on-a-folder", pax([(ZSTD_KEY, "0")]) + folder("d/"), "carries DITTOHEAD.zstd"),
    ]
    found = [Hostile(name, upload([], body=body), expect, row, ZSTD_COMMAND)
             for name, body, expect in cases]  # fmt: skip
    manifest = zmember(MANIFEST, zstd_frame(listed), len(listed)) + end()
    words = "must not be compressed"
    found.append(Hostile("zstd-compressed-manifest", manifest, words, row, ZSTD_COMMAND))
    # Compressed members in an upload that did not ask for them (an old client never sends
    # them): refused before zstd is even loaded.
    plain = upload([], body=zmember("a.bin", half, n))
    found.append(Hostile("zstd-without-the-flag", plain, "did not ask for compression", row))
    return found


def streams(canary: str) -> list[Hostile]:
    """Every hostile stream; `canary` is an absolute folder that must stay empty."""
    found = _grammar() + _names(canary) + _types(canary) + _sizes() + _framing() + _compression()
    names = [h.name for h in found]
    assert len(names) == len(set(names)), "hostile stream names must be unique"
    return found


def main(argv: Sequence[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for case in streams(argv[1] if len(argv) > 1 else "/tmp/dittohead-canary"):
        (out / f"{case.name}.tar").write_bytes(case.stream)
        (out / f"{case.name}.command").write_text(case.command or "", encoding="utf-8")
        (out / f"{case.name}.expect").write_text(case.expect + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
