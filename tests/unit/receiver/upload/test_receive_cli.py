"""``dittohead-receive`` as sshd runs it: a subprocess with ``SSH_ORIGINAL_COMMAND`` set, the
upload on standard input, a temporary config and dropbox."""

from __future__ import annotations

import grp
import hashlib
import io
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dittohead.core.receipt import Receipt
from dittohead.receiver.admin.sshd_cmd import receiver_command
from tests.hostile import recv_harness as h
from tests.hostile import streams as ts

LIMITS = {
    "max_files": 1000,
    "max_file_bytes": 64 << 20,
    "max_upload_bytes": 256 << 20,
    "stall_timeout": 10,
    "min_free_bytes": 0,
}
FILES = {
    "eprime/s01.txt": b"subject 1\n",
    "eprime/s01 (copy).txt": b"",
    "biopac/run1.acq": os.urandom(1 << 20),
    "notes/ünïcødé/日本語.txt": b"ok",
}
ENTRY_RE = re.compile(rf"{ts.SOURCE}-\d{{8}}T\d{{6}}Z-[0-9a-f]{{16}}")


def python_upload(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        listed = [*files.items(), (ts.MANIFEST, ts.manifest_json(list(files.items())))]
        for name, data in listed:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o6777, time.time()
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def server(tmp_path: Path) -> h.Server:
    return h.make_server(tmp_path, limits=LIMITS)


def committed(server: h.Server, result: subprocess.CompletedProcess[bytes]) -> tuple[Receipt, Path]:
    """Check a successful run and return its receipt and committed entry."""
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    lines = result.stdout.decode("utf-8").splitlines()
    assert len(lines) == 1
    receipt = Receipt.from_json(lines[0])
    assert ENTRY_RE.fullmatch(receipt.upload)
    assert server.entries() == [receipt.upload]  # committed: no dot entry left
    return receipt, server.inbox() / receipt.upload


def tree(entry: Path, uid: int | None = None, gid: int | None = None) -> dict[str, bytes]:
    """The files of `entry`, checking modes (and owners) of everything in it."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(entry):
        for name in [".", *dirnames]:
            st = os.stat(Path(dirpath, name))
            assert st.st_mode & 0o7777 == 0o2770, Path(dirpath, name)
            assert uid is None or st.st_uid == uid
            assert gid is None or st.st_gid == gid
        for name in filenames:
            st = os.stat(Path(dirpath, name))
            assert st.st_mode & 0o7777 == 0o640, Path(dirpath, name)
            assert uid is None or st.st_uid == uid
            assert gid is None or st.st_gid == gid
            found[str(Path(dirpath, name).relative_to(entry))] = Path(dirpath, name).read_bytes()
    return found


def test_an_upload_is_committed_with_a_receipt(server: h.Server) -> None:
    stream = python_upload(FILES)
    before = time.time()
    receipt, entry = committed(server, h.run(server, stream))
    stored = tree(entry)
    manifest = stored.pop(ts.MANIFEST)
    assert stored == FILES
    assert manifest == ts.manifest_json(list(FILES.items()))
    assert receipt.manifest_sha256 == hashlib.sha256(manifest).hexdigest()
    assert (receipt.study, receipt.source) == (ts.STUDY, ts.SOURCE)
    assert receipt.user == pwd.getpwuid(os.getuid()).pw_name
    assert (receipt.files, receipt.bytes) == (len(FILES), sum(map(len, FILES.values())))
    arrived = time.mktime(time.strptime(receipt.received_at, "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(arrived - time.timezone - before) < 60


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is not installed")
@pytest.mark.parametrize("fmt", ["pax", "gnu", "ustar"])
def test_gnu_tar_streams_are_accepted(server: h.Server, tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    files = {"data/a.txt": b"a" * 700, "data/sub/" + "b" * 120 + ".txt": b"b"}
    if fmt == "ustar":  # no long names in plain ustar beyond the prefix split
        files = {"data/a.txt": b"a", "data/sub/b.txt": b"b"}
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    (src / ".dittohead").mkdir()
    (src / ts.MANIFEST).write_bytes(ts.manifest_json(list(files.items())))
    stream = subprocess.run(
        ["tar", f"--format={fmt}", "-cf", "-", "-C", str(src), "data", ts.MANIFEST],
        capture_output=True,
        check=True,
    ).stdout
    _, entry = committed(server, h.run(server, stream))
    stored = tree(entry)
    del stored[ts.MANIFEST]
    assert stored == files


def test_the_processor_is_poked(server: h.Server) -> None:
    got: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(server.socket))
        listener.listen(1)
        listener.settimeout(30)

        def accept() -> None:
            conn, _ = listener.accept()
            with conn:
                got.append(conn.recv(100))

        thread = threading.Thread(target=accept)
        thread.start()
        committed(server, h.run(server, python_upload({"a": b"a"})))
        thread.join(30)
    assert got == [b"poke\n"]


def test_a_dead_processor_socket_does_not_fail_the_upload(server: h.Server) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(server.socket))  # exists, but nobody listens
    committed(server, h.run(server, python_upload({"a": b"a"})))


def test_a_full_inbox_file_system_is_refused_before_reading(tmp_path: Path) -> None:
    server = h.make_server(tmp_path, limits={**LIMITS, "min_free_bytes": 1 << 62})
    result = h.run(server, python_upload({"a": b"a"}))
    h.assert_refused(result, "the server is out of space; nothing was stored")
    assert result.returncode == 73
    assert server.entries() == []


def test_usage_and_config_problems_are_one_line(server: h.Server, tmp_path: Path) -> None:
    result = h.run(server, b"", argv=["--nonsense"])
    assert result.returncode == 2
    h.assert_refused(result, "unrecognized arguments: --nonsense")
    result = h.run(server, b"", argv=["--config", str(tmp_path / "nope.yaml")])
    assert result.returncode == 78
    h.assert_refused(result, "cannot read the configuration")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dropbox: /x\nstudies: {alpha: {destination: /d, uploaderz: [g]}}\n")
    h.assert_refused(h.run(server, b"", argv=["--config", str(bad)]), "uploaderz: unknown key")
    result = h.run(server, b"", argv=["--help"])
    assert result.returncode == 0
    assert b"--config" in result.stdout


def _start(server: h.Server, data: bytes) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(h.RECEIVE), "--config", str(server.config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=h.receiver_env(ts.COMMAND),
    )
    assert proc.stdin is not None
    proc.stdin.write(data)
    proc.stdin.flush()
    return proc


def _wait_for_staging(server: h.Server) -> None:
    deadline = time.monotonic() + 10
    while not any(name.startswith(".") for name in server.entries()):
        assert time.monotonic() < deadline, "the receiver never started staging"
        time.sleep(0.02)


def _finish(proc: subprocess.Popen[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.wait(timeout=20)
    proc.stdin.close()
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_mid_upload_removes_the_staging_entry(server: h.Server, signum: int) -> None:
    stream = python_upload({"sub/dir/big.bin": os.urandom(1 << 20)})
    proc = _start(server, stream[: 300 * 1024])
    _wait_for_staging(server)
    time.sleep(0.1)
    proc.send_signal(signum)
    result = _finish(proc)
    h.assert_refused(result, f"the upload was stopped ({signal.Signals(signum).name})")
    assert server.entries() == []


def test_a_stalled_client_is_cut_off(tmp_path: Path) -> None:
    server = h.make_server(tmp_path, limits={**LIMITS, "stall_timeout": 0.5})
    proc = _start(server, python_upload({"a.bin": b"x" * 100_000})[:50_000])
    started = time.monotonic()
    result = _finish(proc)  # stdin stays open while it waits
    assert time.monotonic() - started < 10
    h.assert_refused(result, "no data arrived for 0.5 seconds")
    assert server.entries() == []


def test_a_lost_receipt_keeps_the_committed_upload(server: h.Server) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the client is gone before the receipt is written
    try:
        result = subprocess.run(
            [str(h.RECEIVE), "--config", str(server.config)],
            input=python_upload({"a": b"a"}),
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=h.receiver_env(ts.COMMAND),
            check=False,
        )
    finally:
        os.close(write_end)
    line = h.assert_refused(result, "but its receipt could not be sent")
    entries = server.entries()
    assert len(entries) == 1 and ENTRY_RE.fullmatch(entries[0])
    assert f"stored as {entries[0]}" in line


def test_debug_log_only_when_asked(server: h.Server) -> None:
    bad = ts.with_manifest(ts.member("../x", b"x"))
    quiet = h.run(server, bad)
    h.assert_refused(quiet, "'..'")
    for result in (
        h.run(server, bad, argv=["--config", str(server.config), "-v"]),
        h.run(server, bad, env={"DITTOHEAD_DEBUG": "1"}),
    ):
        lines = result.stderr.decode().splitlines()
        assert len(lines) > 1 and "Traceback" in result.stderr.decode()
        assert lines[-1] == quiet.stderr.decode().strip()


def test_isolated_interpreter_ignores_the_users_environment(
    server: h.Server, tmp_path: Path
) -> None:
    """Started as ``dittohead-admin sshd-config`` prints it (``python -I -X utf8 -m
    dittohead.receiver.upload.receive``); a collector's ~/.bashrc may export PYTHONPATH and any
    locale before sshd runs the ForceCommand."""
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "hijacked"
    (evil / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    result = subprocess.run(
        shlex.split(receiver_command(Path(server.config))),
        input=python_upload(FILES),
        capture_output=True,
        env=h.receiver_env(
            ts.COMMAND, {"PYTHONPATH": str(evil), "LC_ALL": "en_US.ISO-8859-1", "PATH": ""}
        ),
        check=False,
    )
    _, entry = committed(server, result)
    assert not marker.exists()
    stored = tree(entry)
    del stored[ts.MANIFEST]
    assert stored == FILES


# --- root only: real users, foreign inbox owner, a full file system ---------------------------


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture
def collector() -> Iterator[tuple[str, str, str]]:
    """A throwaway collector (primary group = its uploader group) and a throwaway inbox group
    it is *not* in, like the real ``dittohead`` group."""
    tag = secrets.token_hex(3)
    user, uploaders, inbox_group = f"dhtu{tag}", f"dhtc{tag}", f"dhti{tag}"
    _sh("groupadd", uploaders)
    _sh("groupadd", inbox_group)
    _sh(
        "useradd",
        "-M",
        "-N",
        "-g",
        uploaders,
        "-d",
        "/nonexistent",
        "-s",
        "/usr/sbin/nologin",
        user,
    )
    try:
        yield user, uploaders, inbox_group
    finally:
        subprocess.run(["userdel", user], check=False, capture_output=True)
        subprocess.run(["groupdel", uploaders], check=False, capture_output=True)
        subprocess.run(["groupdel", inbox_group], check=False, capture_output=True)


@pytest.mark.root
@pytest.mark.root
def test_unprivileged_collector_uploads_into_a_foreign_3773_inbox(
    collector: tuple[str, str, str],
) -> None:
    user, uploaders, inbox_group = collector
    uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(uploaders).gr_gid
    inbox_gid = grp.getgrnam(inbox_group).gr_gid
    root = Path(tempfile.mkdtemp(prefix="dittohead-collector-"))
    try:
        os.chmod(root, 0o755)
        # The processor's socket folder is not searchable by this collector: the poke must
        # fail quietly, after the commit, instead of failing the upload.
        (root / "run").mkdir(mode=0o700)
        server = h.make_server(
            root, limits=LIMITS, uploaders=[uploaders], socket=root / "run" / "processor.sock"
        )
        for study in (ts.STUDY, ts.CLOSED_STUDY):
            os.chown(server.inbox(study), 0, inbox_gid)  # owner: someone else, like dittohead
            os.chmod(server.inbox(study), 0o3773)
        as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--"]

        receipt, entry = committed(server, h.run(server, python_upload(FILES), prefix=as_user))
        assert receipt.user == user
        stored = tree(entry, uid=uid, gid=inbox_gid)  # the processor's group can read it all
        del stored[ts.MANIFEST]
        assert stored == FILES

        # a refusal cleans up although the collector cannot list the inbox
        bad = ts.with_manifest(ts.member("ok/a.txt", b"a") + ts.header("l", kind=b"2"))
        h.assert_refused(h.run(server, bad, prefix=as_user), "symbolic link")
        h.assert_refused(
            h.run(server, python_upload(FILES), f"dittohead upload v1 {ts.CLOSED_STUDY} pc",
                  prefix=as_user),
            f"you ({user}) are not an uploader for study '{ts.CLOSED_STUDY}'",
        )  # fmt: skip
        assert server.entries() == [receipt.upload]
        assert server.entries(ts.CLOSED_STUDY) == []
    finally:
        shutil.rmtree(root)


@pytest.mark.root
@pytest.mark.root
def test_a_full_disk_fails_cleanly(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"the kernel refused a tmpfs mount: {mounted.stderr.strip()}")
    try:
        server = h.make_server(tmp_path, limits=LIMITS, dropbox=mnt / "dropbox")
        result = h.run(server, python_upload({"a/big.bin": os.urandom(3 << 20)}))
        h.assert_refused(result, "the server is out of space; nothing was stored")
        assert result.returncode == 73
        assert server.entries() == []
        assert os.statvfs(mnt).f_bfree > 0.9 * os.statvfs(mnt).f_blocks  # space given back
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
