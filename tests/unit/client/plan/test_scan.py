"""scan: which files and folders a send can contain, and which names it refuses up front."""

from __future__ import annotations

import logging
import os
import string
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dittohead.client.plan.scan import NamesRejected, Watch, path_key, scan
from dittohead.core.errors import LocalFileError, NameRejected
from dittohead.core.names import check_path
from tests.unit.client.conftest import write_tree


def test_whole_folder_sorted_with_sizes_and_mtimes(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path / "data",
        {"eprime/s02.txt": b"22", "eprime/s01.txt": b"1", "biopac/a/b.acq": b"xyz", "top.csv": b""},
    )
    (root / "empty" / "deeper").mkdir(parents=True)
    os.utime(root / "top.csv", ns=(1_000_000_123, 1_000_000_123))

    plan = scan(root)

    paths = [f.path for f in plan.files]
    assert paths == sorted(paths, key=path_key)
    assert set(paths) == {"eprime/s02.txt", "eprime/s01.txt", "biopac/a/b.acq", "top.csv"}
    for item in plan.files:
        st_ = (root / item.path).stat()
        assert (item.size, item.mtime_ns) == (st_.st_size, st_.st_mtime_ns)
    assert {"eprime", "biopac", "biopac/a", "empty", "empty/deeper"} == set(plan.dirs)
    assert set(plan.empty_dirs) == {"empty", "empty/deeper"}
    assert plan.total_bytes == 6
    assert plan.root == str(root.resolve())


def test_only_the_things_asked_for(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path / "d",
        {"eprime/a.txt": b"a", "biopac/b.acq": b"b", "eyetracker/c.edf": b"c", "loose.txt": b"x"},
    )
    plan = scan(root, ["eprime", "eyetracker/"])  # a trailing separator from tab completion
    assert [f.path for f in plan.files] == ["eprime/a.txt", "eyetracker/c.edf"]
    assert set(plan.dirs) == {"eprime", "eyetracker"}


@pytest.mark.parametrize("thing", ["missing", "loose.txt", "eprime/sub", "..", "a:b"])
def test_a_thing_must_be_an_existing_subfolder_with_a_good_name(tmp_path: Path, thing: str) -> None:
    root = write_tree(tmp_path / "d", {"eprime/sub/a.txt": b"a", "loose.txt": b"x"})
    with pytest.raises((LocalFileError, NameRejected)) as info:
        scan(root, [thing])
    assert "nothing was sent" in info.value.message


def test_a_missing_folder_is_a_local_file_error(tmp_path: Path) -> None:
    with pytest.raises(LocalFileError, match="nothing was sent"):
        scan(tmp_path / "nope")


def test_symlinks_and_special_files_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = write_tree(tmp_path / "outside", {"secret.txt": b"not for the study"})
    root = write_tree(tmp_path / "d", {"real.txt": b"r"})
    (root / "link.txt").symlink_to(outside / "secret.txt")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    os.mkfifo(root / "fifo")

    with caplog.at_level(logging.WARNING, logger="dittohead.client.plan.scan"):
        plan = scan(root)

    assert [f.path for f in plan.files] == ["real.txt"]
    assert plan.dirs == ()
    warned = " ".join(r.getMessage() for r in caplog.records)
    for name in ("link.txt", "linkdir", "fifo"):
        assert name in warned


def test_all_bad_names_are_reported_at_once(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path / "d",
        {"ok.txt": b"", "a:b.txt": b"", "CON.txt": b"", "trailing. ": b"", "sub/q?.txt": b""},
    )
    with pytest.raises(NamesRejected) as info:
        scan(root)
    err = info.value
    bad = {name for name, _ in err.problems}
    assert bad == {"a:b.txt", "CON.txt", "trailing. ", "sub/q?.txt"}
    first = err.line()
    assert "\n" not in first
    assert first.startswith("dittohead: 4 names cannot be sent (nothing was sent): ")
    for name in bad:
        assert repr(name) in first
    assert err.exit_code == NameRejected.exit_code


def test_a_bad_folder_name_is_reported_once_not_for_every_file_inside(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "d", {f"bad:dir/f{i}.txt": b"" for i in range(5)})
    with pytest.raises(NamesRejected) as info:
        scan(root)
    assert [name for name, _ in info.value.problems] == ["bad:dir"]


def test_a_long_list_of_bad_names_stays_one_readable_line(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "d", {f"f{i:03d}?.txt": b"" for i in range(60)})
    with pytest.raises(NamesRejected) as info:
        scan(root)
    assert len(info.value.problems) == 60
    assert info.value.message.startswith("60 names cannot be sent")
    assert "and 40 more" in info.value.message


def test_case_collisions_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "d", {"Data/s01.txt": b"1", "data/s02.txt": b"2"})
    with pytest.raises(NamesRejected) as info:
        scan(root)
    assert "same file" in info.value.message
    assert {name.split("/")[0] for name, _ in info.value.problems} <= {"Data", "data"}


def test_nfc_nfd_collisions_are_refused(tmp_path: Path) -> None:
    nfc = unicodedata.normalize("NFC", "café.txt")
    nfd = unicodedata.normalize("NFD", "café.txt")
    assert nfc != nfd
    root = write_tree(tmp_path / "d", {nfc: b"1", nfd: b"2"})
    with pytest.raises(NamesRejected, match="same file"):
        scan(root)


def test_the_reserved_dittohead_folder_cannot_be_sent(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "d", {".dittohead/manifest.json": b"{}"})
    with pytest.raises(NamesRejected, match="reserved"):
        scan(root)


def test_non_ascii_and_long_names_are_fine(tmp_path: Path) -> None:
    long = "x" * 200 + ".txt"
    root = write_tree(tmp_path / "d", {"sübject/ß.txt": b"1", f"deep/{long}": b"2"})
    plan = scan(root)
    assert {f.path for f in plan.files} == {"sübject/ß.txt", f"deep/{long}"}


def _allowed(name: str) -> bool:
    try:
        check_path(name)
    except NameRejected:
        return False  # e.g. "LPT0" or "con": Windows device names are refused by policy
    return True


_SAFE = st.text(
    alphabet=string.ascii_letters + string.digits + "_-é", min_size=1, max_size=12
).filter(_allowed)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(names=st.sets(_SAFE, min_size=1, max_size=8))
def test_scan_finds_exactly_the_files_present(
    tmp_path_factory: pytest.TempPathFactory, names: set[str]
) -> None:
    root = tmp_path_factory.mktemp("prop")
    with_collision = len({n.casefold() for n in names}) != len(names)
    for name in names:
        (root / name).write_bytes(name.encode())
    if with_collision:
        with pytest.raises(NamesRejected):
            scan(root)
        return
    plan = scan(root)
    assert {f.path for f in plan.files} == names
    for f in plan.files:
        assert check_path(f.path) == f.path
        assert f.size == len(f.path.encode())


# -- the quick pass of a send (scan with a Watch) -----------------------------------------------


def _confirmed(root: Path) -> dict[str, tuple[int, int]]:
    return {f.path: (f.size, f.mtime_ns) for f in scan(root).files}


def test_a_folder_the_state_confirms_gives_the_same_plan_and_no_signal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_tree(tmp_path / "d", {"a/b.txt": b"b", "a/c/d.txt": b"dd", "top.csv": b""})
    (root / "empty").mkdir()
    (root / "link.txt").symlink_to(root / "top.csv")
    fired: list[int] = []
    watch = Watch(_confirmed(root), lambda: fired.append(1))
    expected = scan(root)
    with caplog.at_level(logging.WARNING, logger="dittohead.client.plan.scan"):
        caplog.clear()
        plan = scan(root, watch=watch)
    assert plan == expected
    assert fired == [] and not watch.fired
    assert sum("link.txt" in r.getMessage() for r in caplog.records) == 1


def test_the_first_unconfirmed_file_signals_once_and_the_plan_is_the_full_scan(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_tree(tmp_path / "d", {"a/b.txt": b"b", "m.txt": b"m", "z/y.txt": b"y"})
    (root / "link.txt").symlink_to(root / "m.txt")
    confirmed = _confirmed(root)
    (root / "m.txt").write_bytes(b"changed")
    fired: list[int] = []
    watch = Watch(confirmed, lambda: fired.append(1))
    expected = scan(root)
    with caplog.at_level(logging.WARNING, logger="dittohead.client.plan.scan"):
        caplog.clear()
        plan = scan(root, watch=watch)
    assert plan == expected
    assert fired == [1] and watch.fired
    # said once, by the proper scan (the quick pass keeps its warnings when it stops)
    assert sum("link.txt" in r.getMessage() for r in caplog.records) == 1


def test_a_bad_name_stops_the_quick_pass_without_a_signal(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "d", {"a|b.txt": b"", "ok.txt": b""})
    fired: list[int] = []
    with pytest.raises(NamesRejected, match=r"a\|b\.txt"):
        scan(root, watch=Watch({}, lambda: fired.append(1)))
    assert fired == []  # nothing can be sent: no reason to connect


def test_twins_the_server_confirmed_long_ago_are_not_a_reason_to_refuse(tmp_path: Path) -> None:
    # Sent apart (one was renamed in between) and both confirmed: nothing is sent, so nothing
    # can collide; a proper scan would refuse them if either were sent again.
    root = write_tree(tmp_path / "d", {"A.txt": b"1", "a.txt": b"2"})
    confirmed = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.iterdir()}
    plan = scan(root, watch=Watch(confirmed, lambda: None))
    assert [f.path for f in plan.files] == ["A.txt", "a.txt"]
    with pytest.raises(NamesRejected):
        scan(root)
