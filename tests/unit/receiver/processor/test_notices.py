"""The processor's notices: recorded durably and exactly once per event, also across a kill at
the instants around the moves that end an entry; disk levels with hysteresis on a real small
file system; silent stations with a clock the test moves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dittohead.receiver.admin.init_cmd import init
from dittohead.receiver.processor import notices
from dittohead.receiver.processor.finalize import run_once
from dittohead.receiver.processor.notices import Notice, next_level
from tests.support.disks import fill_to, small_disk
from tests.support.mail import mail_server
from tests.support.server import STUDY, Server

REPO = Path(__file__).resolve().parents[4]
PROCESS = (
    "import sys\n"
    "from dittohead.receiver.processor import finalize\n"
    "from dittohead.receiver.config.model import load_config\n"
    "finalize.run_once(load_config(sys.argv[1]))\n"
)


def queued(server: Server) -> list[Notice]:
    folder = server.config.state_dir / "notices" / "queue"
    return sorted(
        (Notice.from_json(p.read_bytes()) for p in folder.glob("*.json")), key=lambda n: n.id
    )


def kinds(server: Server) -> list[str]:
    return [n.kind for n in queued(server)]


def test_nothing_is_recorded_without_mail(server: Server) -> None:
    server.commit({"a.txt": b"a"})
    run_once(server.config)
    assert not (server.config.state_dir / "notices").exists()


def test_a_finalized_entry_is_recorded_only_with_on_success(tmp_path: Path) -> None:
    quiet = mail_server(tmp_path / "quiet", 25)
    quiet.commit({"a.txt": b"a"})
    run_once(quiet.config)
    assert queued(quiet) == []

    server = mail_server(tmp_path / "loud", 25, mail={"on_success": True})
    name = server.commit({"a.txt": b"a", "d/b.txt": b"b"})
    server.commit({"a.txt": b"a"})  # a second upload: a duplicate of the first one's a.txt
    run_once(server.config)
    found = {n.entry: n for n in queued(server)}
    first = found[name]
    assert (first.kind, first.study, first.source) == ("finalized", STUDY, "brogden-a")
    assert (first.files, first.stored, first.duplicates) == (2, 2, 0)
    assert sorted(first.names) == ["a.txt", "d/b.txt"]
    assert first.uploader and first.received_at.endswith("Z")
    assert [n.duplicates for n in found.values() if n.entry != name] == [1]
    run_once(server.config)  # a pass with nothing to do records nothing more
    assert len(queued(server)) == 2


def test_a_quarantined_entry_is_recorded_with_its_reason(tmp_path: Path) -> None:
    server = mail_server(tmp_path, 25)
    name = server.commit({"a.txt": b"a"}, manifest={"files": 2, "bytes": 1, "entries": []})
    run_once(server.config)
    (notice,) = queued(server)
    assert (notice.kind, notice.entry) == ("quarantined", name)
    assert notice.reason
    reason = (server.config.study_dir(STUDY) / "quarantine" / f"{name}.reason").read_text()
    assert notice.reason == reason.strip()


def _run(server: Server, crash: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "DITTOHEAD_TEST_CRASH_AT"}
    if crash:
        env["DITTOHEAD_TEST_CRASH_AT"] = crash
    proc = subprocess.run(
        [sys.executable, "-c", PROCESS, str(server.config_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.decode()
    return proc.returncode


@pytest.mark.parametrize("crash", ["flushed", "done", "cleaned", "claimed", "staged"])
def test_a_kill_around_the_move_to_done_records_the_notice_once(tmp_path: Path, crash: str) -> None:
    server = mail_server(tmp_path, 25, mail={"on_success": True})
    name = server.commit({"a.txt": b"a"})
    assert _run(server, crash) == -signal.SIGKILL
    assert _run(server, None) == 0
    assert [(n.kind, n.entry) for n in queued(server)] == [("finalized", name)]


@pytest.mark.parametrize("crash", ["quarantined", "claimed"])
def test_a_kill_around_the_move_to_quarantine_records_the_notice_once(
    tmp_path: Path, crash: str
) -> None:
    server = mail_server(tmp_path, 25)
    name = server.commit({"a.txt": b"a"}, manifest={"files": 2, "bytes": 1, "entries": []})
    assert _run(server, crash) == -signal.SIGKILL
    assert _run(server, None) == 0
    assert [(n.kind, n.entry) for n in queued(server)] == [("quarantined", name)]


def test_a_notice_already_sent_is_not_recorded_again(tmp_path: Path) -> None:
    server = mail_server(tmp_path, 25)
    outbox = notices.Outbox(server.config.state_dir)
    notice = Notice(id="silent.x.1", kind="silent", created=1.0, source="x")
    assert outbox.record(notice)
    os.rename(outbox.queue / "silent.x.1.json", outbox.sent / "silent.x.1.json")
    assert not outbox.record(notice)
    assert list(outbox.queue.iterdir()) == []


# -- disk levels --------------------------------------------------------------------------


def test_levels_are_announced_once_upward_and_rearmed_below_the_hysteresis() -> None:
    levels = (90, 95, 99)
    walk = [50, 90.0, 91, 89.5, 90.5, 87.9, 90, 97, 99.5, 96, 92.9, 95, 10, 100]
    announced, said = 0, []
    for percent in walk:
        level, announced = next_level(levels, announced, percent)
        said.append(level)
    assert said == [0, 90, 0, 0, 0, 0, 90, 95, 99, 0, 0, 95, 0, 99]


@pytest.mark.root
def test_a_real_disk_crossing_a_level_is_announced_once(tmp_path: Path) -> None:
    server = mail_server(tmp_path, 25, disk={"warn_percent": [50, 80]})
    # The destination's parent becomes a small file system of its own; init makes the
    # destination again on it.
    disk = server.destination.parent
    with small_disk(disk):
        init(server.config)
        run_once(server.config)
        assert kinds(server) == []
        fill = disk / "fill"
        fill_to(fill, 60)
        run_once(server.config)
        run_once(server.config)
        (first,) = queued(server)
        assert (first.kind, first.level, first.what) == ("disk", 50, "destination")
        assert first.studies == (STUDY,) and first.mount == str(disk)
        assert 50 <= first.percent < 80
        fill_to(fill, 49)  # below 50 but not 2 points below: still announced
        run_once(server.config)
        assert len(queued(server)) == 1
        fill_to(fill, 10)  # clearly below: re-armed
        run_once(server.config)
        fill_to(fill, 55)
        run_once(server.config)
        levels = sorted((n.level, n.id) for n in queued(server))
        assert [lv for lv, _ in levels] == [50, 50]
        assert levels[0][1] != levels[1][1]
        fill_to(fill, 85)
        run_once(server.config)
        assert sorted(n.level for n in queued(server)) == [50, 50, 80]


@pytest.mark.root
def test_an_upgrade_to_the_shared_state_keeps_what_this_host_announced(tmp_path: Path) -> None:
    """Before .notices/ existed, a host kept its levels keyed by its mount point and its
    stations in <state_dir>/notices/: the first shared decision starts from them, so the
    upgrade announces no crossing again and forgets no station."""
    server = mail_server(
        tmp_path, 25, disk={"warn_percent": [50, 80]}, stations={"silent_after": "7d"}
    )
    disk = server.destination.parent
    with small_disk(disk):
        init(server.config)
        local = server.config.state_dir / "notices"
        local.mkdir(parents=True, exist_ok=True)
        (local / "levels.json").write_text(
            json.dumps({str(disk): {"announced": 50, "crossings": 1}})
        )
        old_station = {"brogden-old": {"last": 1.0e9, "studies": [STUDY], "announced": 1.0e9}}
        (local / "stations.json").write_text(json.dumps(old_station))
        fill_to(disk / "fill", 60)
        run_once(server.config)
        assert kinds(server) == []  # 50% was announced before the upgrade
        shared = server.config.dropbox / ".notices"
        levels = json.loads((shared / "levels.json").read_text())
        assert levels[notices.fs_key("destination", [STUDY])]["announced"] == 50
        assert not [key for key in levels if key.startswith("/")]
        server.commit({"a.txt": b"a"})  # a station seen: the first shared stations decision
        run_once(server.config)
        seen = json.loads((shared / "stations.json").read_text())
        assert {"brogden-old", "brogden-a"} <= set(seen)
        fill_to(disk / "fill", 85)
        run_once(server.config)
        assert [(n.kind, n.level) for n in queued(server)] == [("disk", 80)]


# -- silent stations -----------------------------------------------------------------------


def test_a_silent_station_is_announced_once_until_it_sends_again(tmp_path: Path) -> None:
    server = mail_server(tmp_path, 25, stations={"silent_after": "12h"})
    # Shared by the hosts: in the dropbox (init made the folder).
    state_file = server.config.dropbox / ".notices" / "stations.json"
    hour = 3600.0
    server.commit({"a.txt": b"a"})
    run_once(server.config)
    state = json.loads(state_file.read_text())
    assert state["brogden-a"]["studies"] == [STUDY]
    # The clock is the test's: the checks run "later" by passing a later time.
    last = state["brogden-a"]["last"]

    def at(hours: float) -> list[str]:
        notices.after_pass(server.config, clock=lambda: last + hours * hour)
        return [n.id for n in queued(server)]

    assert at(11) == []
    assert at(12.5) == [f"silent.brogden-a.{int(last * 1000)}"]
    assert at(13) == at(48) == [f"silent.brogden-a.{int(last * 1000)}"]  # once
    (notice,) = queued(server)
    assert notice.studies == (STUDY,) and notice.last_seen == last
    # It sends again (the entry's arrival is the real clock, so move the last upload that
    # was seen a day back to make "again" come after the silence): re-armed.
    state["brogden-a"].update(last=last - 24 * hour, announced=last - 24 * hour)
    state_file.write_text(json.dumps(state))
    server.commit({"b.txt": b"b"})
    run_once(server.config)
    again = json.loads(state_file.read_text())["brogden-a"]["last"]
    assert again >= last
    notices.after_pass(server.config, clock=lambda: again + 1 * hour)
    assert len(queued(server)) == 1
    notices.after_pass(server.config, clock=lambda: again + 13 * hour)
    assert len(queued(server)) == 2
    notices.after_pass(server.config, clock=lambda: again + 14 * hour)
    assert len(queued(server)) == 2


def test_without_the_shared_folder_the_state_stays_on_this_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dropbox that 'init' has not yet given its .notices/ folder (an upgrade): one host
    goes on as before, its state in <state_dir>/notices/, and says why once."""
    server = mail_server(tmp_path, 25, stations={"silent_after": "1h"})
    (server.config.dropbox / ".notices").rmdir()
    monkeypatch.setattr(notices, "_UNSHARED", set())  # nothing said yet in this process
    server.commit({"a.txt": b"a"})
    server.commit({"b.txt": b"b"})
    run_once(server.config)
    local = server.config.state_dir / "notices" / "stations.json"
    last = json.loads(local.read_text())["brogden-a"]["last"]
    notices.after_pass(server.config, clock=lambda: last + 7200)
    assert [n.kind for n in queued(server)] == ["silent"]
    assert not (server.config.dropbox / ".notices").exists()
    said = [r for r in caplog.records if ".notices is missing" in r.getMessage()]
    assert len(said) == 1  # once per process, not at every upload and pass


def test_a_station_that_never_sent_is_never_silent(tmp_path: Path) -> None:
    server = mail_server(tmp_path, 25, stations={"silent_after": "90s"})
    notices.after_pass(server.config, clock=lambda: 4e9)
    assert queued(server) == []
