"""The service's pieces in-process: stopping between files, progress, LISTEN_FDS, pokes."""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dittohead.receiver.processor import service
from dittohead.receiver.processor.finalize import (
    Hooks,
    KernelSettingError,
    Stopped,
    check_kernel,
    run_once,
)
from tests.support.invariants import ledger_of, tree_files
from tests.support.server import Server


def test_a_stop_between_files_is_finished_by_the_next_run(server: Server) -> None:
    files = {f"d/f{i}.txt": f"file {i}".encode() for i in range(5)}
    name = server.commit(files)
    seen: list[str] = []

    def stop_after_two() -> bool:
        return sum("finalizing" in m for m in seen) > 2

    with pytest.raises(Stopped):
        run_once(server.config, Hooks(progress=seen.append, stop_requested=stop_after_two))
    assert any(m.startswith("verifying nccam3 " + name) for m in seen)
    assert f"finalizing nccam3 {name}: 0/5 files" in seen
    # Two files are published and recorded; the rest waits with the journal.
    assert len(ledger_of(server.destination)) == 2
    summary = run_once(server.config)
    assert summary.entries == 1
    assert tree_files(server.destination) == files
    records = ledger_of(server.destination)
    assert sorted(str(r["path"]) for r in records) == sorted(files)
    assert all(r["outcome"] == "stored" for r in records)


def test_a_stop_before_an_entry_leaves_it_in_the_inbox(server: Server) -> None:
    name = server.commit({"a.txt": b"a"})
    with pytest.raises(Stopped):
        run_once(server.config, Hooks(stop_requested=lambda: True))
    assert (server.inbox / name).is_dir()
    assert run_once(server.config).entries == 1


def test_pokes_are_drained_without_waiting_for_silent_pokers(tmp_path: Path) -> None:
    path = tmp_path / "p.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    listener.setblocking(False)
    silent = socket.socket(socket.AF_UNIX)
    silent.connect(str(path))  # connects and never sends
    talker = socket.socket(socket.AF_UNIX)
    talker.connect(str(path))
    talker.send(b"x" * 10_000)  # more than the bounded read; the rest is dropped
    assert service.drain_pokes(listener) == 2
    assert service.drain_pokes(listener) == 0
    for s in (silent, talker, listener):
        s.close()


def test_listen_fdnames_picks_the_processor_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mine.bind("\0dittohead-test-" + str(os.getpid()))
    mine.listen(1)
    # Put them where systemd would: fds 3 and 4.
    saved = {fd: _dup_or_none(fd) for fd in (3, 4)}
    try:
        os.dup2(other.fileno(), 3)
        os.dup2(mine.fileno(), 4)
        monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
        monkeypatch.setenv("LISTEN_FDS", "2")
        monkeypatch.setenv("LISTEN_FDNAMES", "other:processor")
        sock = service._passed_socket()
        assert sock is not None and sock.fileno() == 4
        assert "LISTEN_FDS" not in os.environ
        sock.detach()
        monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
        monkeypatch.setenv("LISTEN_FDS", "2")
        monkeypatch.setenv("LISTEN_FDNAMES", "a:b")
        with pytest.raises(service.ServiceError, match="FileDescriptorName=processor"):
            service._passed_socket()
    finally:
        for fd, copy in saved.items():
            if copy is None:
                os.close(fd)
            else:
                os.dup2(copy, fd)
                os.close(copy)
        other.close()
        mine.close()


def _dup_or_none(fd: int) -> int | None:
    try:
        return os.dup(fd)
    except OSError:
        return None


def test_listen_pid_of_another_process_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", "1")
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert service._passed_socket() is None


def test_the_processor_never_asks_for_set_id_bits(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It runs under RestrictSUIDSGID=yes, whose seccomp filter refuses mkdir/chmod/open calls
    carrying S_ISUID or S_ISGID: set-gid folders must come from inheritance, not from a mode."""
    server.commit({"a/b/c.txt": b"deep", "d.txt": b"flat"})  # the collector's side: unwatched
    asked: list[tuple[str, int]] = []

    def spy(name: str, real: Callable[..., Any], mode_at: int) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            mode = args[mode_at] if len(args) > mode_at else kwargs.get("mode", 0o777)
            asked.append((name, mode))
            return real(*args, **kwargs)

        return wrapper

    for name, mode_at in (("mkdir", 1), ("chmod", 1), ("fchmod", 1), ("open", 2)):
        monkeypatch.setattr(os, name, spy(name, getattr(os, name), mode_at))
    assert run_once(server.config).stored == 2
    assert any(name == "mkdir" for name, _ in asked)
    assert [(n, oct(m)) for n, m in asked if m & (stat.S_ISUID | stat.S_ISGID)] == []
    # ... and the folders still end up set-gid, inherited from the destination.
    assert (server.destination / "a" / "b").stat().st_mode & stat.S_ISGID


def test_the_watchdog_pings_while_the_main_thread_moves_bytes(tmp_path: Path) -> None:
    pings: list[str] = []
    dog = service.Watchdog(pings.append, 100_000)  # ping every 50 ms
    dog.start()
    try:
        # Busy without beats (a long copy): the main thread's own I/O keeps it alive.
        sink = tmp_path / "sink"
        deadline = time.monotonic() + 0.6
        with sink.open("wb") as out:
            while time.monotonic() < deadline:
                out.write(b"x" * 4096)
                out.flush()
                time.sleep(0.005)
        busy = len(pings)
        # Hung: no beats, no I/O on the main thread: the pings stop.
        time.sleep(0.4)
        stalled = len(pings)
        time.sleep(0.4)
        assert len(pings) == stalled
    finally:
        dog.stop()
    assert busy >= 5 and set(pings) == {"WATCHDOG=1"}


def test_the_processor_refuses_when_protected_hardlinks_is_off_or_hidden(tmp_path: Path) -> None:
    setting = tmp_path / "protected_hardlinks"
    setting.write_text("1\n")
    check_kernel(setting)
    setting.write_text("0\n")
    with pytest.raises(KernelSettingError, match="sysctl"):
        check_kernel(setting)
    if Path("/proc/self").exists():  # hidden, as ProcSubset=pid would
        with pytest.raises(KernelSettingError, match="ProcSubset"):
            check_kernel(tmp_path / "missing")
