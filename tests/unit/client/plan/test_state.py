"""state: only new or changed files are selected; the record changes only after a receipt."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dittohead.client.plan.scan import FileItem, Plan, scan
from dittohead.client.plan.state import (
    State,
    default_state_file,
    load_state,
    server_id,
    state_folder,
    write_atomic,
)
from dittohead.core.errors import LocalFileError, UsageError
from tests.unit.client.conftest import write_tree

HOST, PORT, STUDY, SOURCE = "drop.example.org", 22, "nccam3", "brogden-a"


def _load(path: str | Path | None = None) -> State:
    return load_state(path, host=HOST, port=PORT, study=STUDY, source=SOURCE)


def test_default_location_follows_xdg_and_is_keyed(isolated_home: Path) -> None:
    assert Path(state_folder()) == isolated_home / ".local" / "state" / "dittohead"
    a = Path(default_state_file(HOST, PORT, STUDY, SOURCE))
    assert a.parent == Path(state_folder())
    others = {
        Path(default_state_file(HOST, 2222, STUDY, SOURCE)),
        Path(default_state_file("other", PORT, STUDY, SOURCE)),
        Path(default_state_file(HOST, PORT, "other", SOURCE)),
        Path(default_state_file(HOST, PORT, STUDY, "other")),
        Path(default_state_file("a:b", PORT, STUDY, SOURCE)),
        Path(default_state_file("a_b", PORT, STUDY, SOURCE)),
    }
    assert a not in others and len(others) == 6
    for path in others | {a}:
        assert all(c.isalnum() or c in "._-" for c in path.name)


def test_without_xdg_the_default_is_under_home(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_STATE_HOME")
    assert Path(state_folder()) == isolated_home / ".local" / "state" / "dittohead"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/is/ignored")
    assert Path(state_folder()) == isolated_home / ".local" / "state" / "dittohead"


def test_new_and_changed_files_are_selected_confirmed_ones_are_not(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "d", {"same.txt": b"1", "grown.txt": b"2", "touched.txt": b"3"})
    state = _load(tmp_path / "s.json")
    state.record(scan(root).files)

    (root / "grown.txt").write_bytes(b"22")
    st_ = (root / "touched.txt").stat()
    os.utime(root / "touched.txt", ns=(st_.st_atime_ns, st_.st_mtime_ns + 1))
    (root / "new.txt").write_bytes(b"4")

    selected = _load(tmp_path / "s.json").select(scan(root))
    assert {f.path for f in selected.files} == {"grown.txt", "touched.txt", "new.txt"}


def test_a_never_sent_file_with_an_old_mtime_is_still_sent(tmp_path: Path) -> None:
    # The tool this replaces picked files newer than its last run and so lost files copied in
    # with their original (old) modification time.
    root = write_tree(tmp_path / "d", {"today.txt": b"t"})
    state = _load(tmp_path / "s.json")
    state.record(scan(root).files)

    (root / "copied-from-usb.txt").write_bytes(b"old data")
    os.utime(root / "copied-from-usb.txt", ns=(946_684_800 * 10**9, 946_684_800 * 10**9))

    selected = _load(tmp_path / "s.json").select(scan(root))
    assert [f.path for f in selected.files] == ["copied-from-usb.txt"]


@settings(max_examples=50, deadline=None)
@given(
    files=st.dictionaries(
        st.text(alphabet="abcdef", min_size=1, max_size=4),
        st.tuples(st.integers(0, 5), st.integers(0, 5)),
        max_size=10,
    ),
    confirmed=st.dictionaries(
        st.text(alphabet="abcdef", min_size=1, max_size=4),
        st.tuples(st.integers(0, 5), st.integers(0, 5)),
        max_size=10,
    ),
)
def test_selection_is_exactly_the_unconfirmed_files(
    files: dict[str, tuple[int, int]], confirmed: dict[str, tuple[int, int]]
) -> None:
    plan = Plan("/nowhere", tuple(FileItem(p, s, m) for p, (s, m) in sorted(files.items())), ())
    state = State(Path("/nowhere/s.json"), server_id(HOST, PORT), STUDY, SOURCE, dict(confirmed))
    selected = {f.path for f in state.select(plan).files}
    assert selected == {p for p, sm in files.items() if confirmed.get(p) != sm}


def test_state_file_format(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "s.json"
    state = _load(path)
    state.record([FileItem("eprime/ü.txt", 3, 1_700_000_000_123_456_789)])
    doc = json.loads(path.read_text("utf-8"))
    assert doc == {
        "version": 1,
        "server": f"{HOST}:{PORT}",
        "study": STUDY,
        "source": SOURCE,
        "files": {"eprime/ü.txt": [3, 1_700_000_000_123_456_789]},
    }


def test_record_keeps_what_another_send_recorded_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    first, second = _load(path), _load(path)
    first.record([FileItem("a", 1, 1)])
    second.record([FileItem("b", 2, 2)])
    assert _load(path).files == {"a": (1, 1), "b": (2, 2)}


def test_a_state_file_of_another_server_or_study_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    load_state(path, host="elsewhere", port=PORT, study=STUDY, source=SOURCE).record(
        [FileItem("a", 1, 1)]
    )
    before = path.read_bytes()
    with pytest.raises(UsageError, match="belongs to server elsewhere"):
        _load(path)
    assert path.read_bytes() == before


def test_a_damaged_state_file_means_send_everything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"version": 1, "files": {"a": "garbage"')
    state = _load(path)
    assert state.files == {}
    assert "damaged" in caplog.text


@pytest.mark.parametrize(
    "entry", ["garbage", [1], [1, 2, 3], [True, 1], [1, False], [1.0, 2], [1, "2"], None, {"a": 1}]
)
def test_a_state_entry_that_is_not_two_whole_numbers_means_send_everything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, entry: object
) -> None:
    path = tmp_path / "s.json"
    doc = {"version": 1, "server": f"{HOST}:{PORT}", "study": STUDY, "source": SOURCE}
    doc["files"] = {"a": [1, 2], "b": entry}
    path.write_text(json.dumps(doc))
    assert _load(path).files == {}
    assert "damaged" in caplog.text
    doc["files"] = {"a": [1, 2], "b": [3, 4]}
    path.write_text(json.dumps(doc))
    assert _load(path).files == {"a": (1, 2), "b": (3, 4)}


def test_atomic_write_leaves_the_old_file_when_writing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "st" / "s.json"
    write_atomic(path, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(path.parent) == ["s.json"]  # no temporary file left behind


def test_atomic_write_replaces_and_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.json"
    write_atomic(path, b"old")
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def replace(src: str, dst: Path) -> None:
        calls.append("replace")
        assert Path(src).parent == path.parent  # same folder: the rename is atomic
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert calls[:2] == ["fsync", "replace"]  # data synced before it replaces the old file


# -- staged while the receipt is awaited, committed after it ---------------------------------


def _folder(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.parent.iterdir()}


def test_a_staged_state_changes_nothing_until_it_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "st" / "s.json"
    _load(path).record([FileItem("old", 1, 1)])
    before = _folder(path)
    state = _load(path)
    staged = state.stage([FileItem("a", 2, 2), FileItem("b", 3, 3)])
    assert path.read_bytes() == before["s.json"]
    assert state.files == {"old": (1, 1)}
    staged.commit()
    assert _load(path).files == state.files == {"old": (1, 1), "a": (2, 2), "b": (3, 3)}
    assert os.listdir(path.parent) == ["s.json"]
    with pytest.raises(RuntimeError):
        staged.commit()


def test_a_discarded_state_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "st" / "s.json"
    _load(path).record([FileItem("old", 1, 1)])
    before = _folder(path)
    staged = _load(path).stage([FileItem("a", 2, 2)])
    assert len(_folder(path)) == 2  # the temporary file, beside the state
    staged.discard()
    staged.discard()
    assert _folder(path) == before


def test_a_send_recorded_between_stage_and_commit_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "st" / "s.json"
    first, second = _load(path), _load(path)
    staged = first.stage([FileItem("a", 1, 1)])
    second.record([FileItem("b", 2, 2)])  # another window, done while `first` waited
    staged.commit()
    assert _load(path).files == {"a": (1, 1), "b": (2, 2)}
    assert os.listdir(path.parent) == ["s.json"]


def test_staging_reads_the_sent_files_once(tmp_path: Path) -> None:
    path = tmp_path / "st" / "s.json"
    staged = _load(path).stage(iter([FileItem("a", 1, 1)]))
    _load(path).record([FileItem("b", 2, 2)])
    staged.commit()  # merges again, with the same sent files
    assert _load(path).files == {"a": (1, 1), "b": (2, 2)}


def test_a_state_that_cannot_be_written_or_replaced_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "st" / "s.json"
    _load(path).record([FileItem("old", 1, 1)])
    before = _folder(path)

    def broken(*args: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", broken)
        with pytest.raises(LocalFileError, match="could not remember"):
            _load(path).stage([FileItem("a", 2, 2)])
    assert _folder(path) == before
    staged = _load(path).stage([FileItem("a", 2, 2)])
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(LocalFileError, match="could not remember"):
        staged.commit()
    assert _folder(path) == before


def test_temporary_files_of_a_killed_send_are_swept_fresh_ones_are_not(tmp_path: Path) -> None:
    path = tmp_path / "st" / "s.json"
    _load(path).record([FileItem("old", 1, 1)])
    stale, fresh, other = (path.parent / n for n in (".s.json.x1.tmp", ".s.json.x2.tmp", "x.tmp"))
    for p in (stale, fresh, other):
        p.write_bytes(b"{}")
    os.utime(stale, (1_000_000, 1_000_000))
    os.utime(other, (1_000_000, 1_000_000))
    _load(path).stage([FileItem("a", 2, 2)]).discard()
    assert sorted(os.listdir(path.parent)) == sorted(["s.json", fresh.name, other.name])


@pytest.mark.parametrize("builtin", [True, False], ids=["cpython-sha256", "hashlib"])
def test_the_state_file_name_hash_is_sha256(builtin: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # The digest in the default file name comes from CPython's own SHA-256 when there is one
    # (quicker to load than hashlib's); a different digest would lose every collector's state.
    if not builtin:
        monkeypatch.setitem(sys.modules, "_sha2", None)
        monkeypatch.setitem(sys.modules, "_sha256", None)
    key = f"{server_id(HOST, PORT)}\n{STUDY}\n{SOURCE}"
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:10]
    assert default_state_file(HOST, PORT, STUDY, SOURCE).endswith(f"-{digest}.json")


def test_a_state_file_named_as_text_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --state comes as text (pathlib is loaded only once ssh runs): a bare name is a file in
    # the current folder, where it is written, swept and synced as a Path's would be.
    here = tmp_path / "pc"
    here.mkdir()
    monkeypatch.chdir(here)
    _load("st.json").record([FileItem("a", 1, 1)])
    (here / ".st.json.x1.tmp").write_bytes(b"{}")
    os.utime(here / ".st.json.x1.tmp", (1_000_000, 1_000_000))
    _load("st.json").record([FileItem("b", 2, 2)])
    assert os.listdir(here) == ["st.json"]
    assert _load(here / "st.json").files == {"a": (1, 1), "b": (2, 2)}


def test_the_known_hosts_file_sits_in_the_state_folder(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dittohead.client.plan.state import user_known_hosts, user_known_hosts_file

    for xdg in (str(isolated_home / "x"), None):
        if xdg is None:
            monkeypatch.delenv("XDG_STATE_HOME")
            folder = isolated_home / ".local" / "state" / "dittohead"
        else:
            monkeypatch.setenv("XDG_STATE_HOME", xdg)
            folder = Path(xdg) / "dittohead"
        assert Path(state_folder()) == folder
        assert Path(user_known_hosts_file()) == user_known_hosts() == folder / "known_hosts"
