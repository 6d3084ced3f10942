"""layout: where a send's files land, and the warning for a FOLDER that looks like a thing."""

from __future__ import annotations

import pytest

from dittohead.client.plan.layout import landing, misnamed_folder


def test_landing_names_the_top_level_folders_and_loose_files() -> None:
    paths = ["eprime/s01.txt", "eprime/s02.txt", "biopac/r.acq", "notes.txt"]
    assert landing(paths) == (
        "biopac/ (1 file), eprime/ (2 files), 1 file at the top of the study's folder: notes.txt"
    )


def test_landing_of_a_subfolder_sent_as_folder_says_the_top() -> None:
    assert landing(["s01.txt", "s02.txt"]) == (
        "2 files at the top of the study's folder: s01.txt, s02.txt"
    )


def test_landing_stays_short() -> None:
    paths = [f"t{i}/a" for i in range(7)] + [f"f{i}.txt" for i in range(6)]
    text = landing(paths)
    assert "t0/ (1 file)" in text and "3 more folders" in text and "t6/" not in text
    assert "6 files at the top" in text and text.endswith("f3.txt, …")
    assert landing([]) == "nothing"


@pytest.mark.parametrize(
    "folder",
    [
        "/data/nccam3/eprime",
        "/data/NCCAM3/eprime/",
        "D:\\Data\\nccam3\\eprime",
        "D:/Data/nccam3/eprime",  # a toml's folder, written with slashes
        "\\\\labnas\\studies\\nccam3\\eprime",  # a UNC share
    ],
)
def test_a_folder_inside_one_named_like_the_study_is_warned_about(folder: str) -> None:
    warning = misnamed_folder(folder, "nccam3", [])
    assert warning is not None
    assert "looks like one of the study's subfolders" in warning
    assert "stored at the top of the study's folder, not in eprime/" in warning
    assert warning.endswith("eprime)") and "nccam3 eprime" in warning.lower()


def test_a_folder_named_like_a_thing_the_server_has_is_warned_about() -> None:
    warning = misnamed_folder("/home/jo/eprime", "nccam3", ["eprime/s01.txt", "x.csv"])
    assert warning is not None and "already sent files into a folder eprime/" in warning


@pytest.mark.parametrize(
    ("folder", "confirmed"),
    [
        ("/data/nccam3", ["eprime/s01.txt"]),  # the study's folder itself
        ("/data/session-7", ["eprime/s01.txt", "s01.txt"]),  # loose files are not things
        ("/", []),
        ("\\\\labnas\\nccam3", ["eprime/s01.txt"]),  # a UNC share named like the study
        ("D:\\", []),
    ],
)
def test_the_study_folder_is_not_warned_about(folder: str, confirmed: list[str]) -> None:
    assert misnamed_folder(folder, "nccam3", confirmed) is None
