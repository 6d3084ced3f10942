"""``dittohead-gui`` as a collector uses it: a real window on a real X server (Xvfb), driven
with xdotool (tests/support/desktop.py), sending through the real sshd tier
(`harness.deployment`: real users with passwords ``<name>-pw`` and keys, OpenSSH's sshd with
the receiver as ForceCommand).

Each test starts the window as a process of its own and talks to it only through the X server:
keys (Return, Escape, Alt + a mnemonic, typed text) and the titles of the windows it opens
(``xdotool search --name``). What was sent is judged on the server (the processor finalizes
the inbox; the files in the study's destination are counted), never by asking the window.

With ``DITTOHEAD_SCREENSHOTS=FOLDER`` each state is also photographed into FOLDER (what
tests/gui/screenshots.py does for docs/collectors/window.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Deployment, free_port, run
from tests.support.desktop import WAIT, Screen, xvfb

pytestmark = [pytest.mark.gui, pytest.mark.sshd, pytest.mark.root]

PRESET = "nccam3"


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    with xvfb() as name:
        yield name


class Gui(Screen):
    """One ``dittohead-gui`` process and the X server it shows on."""

    def __init__(self, dep: Deployment, display: str, home: Path, config: Path, **env: str):
        self.home = home
        self.env = {
            **{
                k: v for k, v in os.environ.items() if k not in ("DITTOHEAD_SSH", "DITTOHEAD_BATCH")
            },
            "DISPLAY": display,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_STATE_HOME": str(home / "state"),
            **env,
        }
        proc = subprocess.Popen(
            [str(dep.python), "-I", "-m", "dittohead.client.gui.app",
             "--config", str(config), "--preset", PRESET],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        super().__init__(display, proc)
        self.main = self.wait_for("^dittohead$")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        _out, err = self.proc.communicate(timeout=10)
        # Nothing on stderr but our own words: the window says everything in itself.
        assert err == "", err


def write_config(
    dep: Deployment, path: Path, folder: Path, *, user: str, port: int | None = None,
    key: bool | Path = False, pinned: bool = True, study: str | None = None,
    things: tuple[str, ...] = ("eprime",),
) -> Path:  # fmt: skip
    lines = [
        "[server]",
        'host = "127.0.0.1"',
        f"port = {port or dep.port}",
        'station = "brogden-a"',
    ]
    if pinned:
        lines.append(f'known_hosts = "{dep.known_hosts}"')
    lines += ["", "[[preset]]", f'name = "{PRESET}"', f'study = "{study or dep.study}"',
              f'folder = "{folder}"', f'user = "{user}"']  # fmt: skip
    if things:
        lines.append("things = [" + ", ".join(f'"{t}"' for t in things) + "]")
    if key:
        lines.append(f'identity = "{key if isinstance(key, Path) else dep.key(user)}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def stored(dep: Deployment, prefix: str) -> list[str]:
    """The files under `prefix` finalized into the study's destination, after a processor
    pass (the deployment is shared by the tier: each test sends names of its own)."""
    done = dep.process()
    assert done.returncode == 0, done.stderr
    return sorted(
        name
        for p in dep.destination.rglob("*")
        if p.is_file() and (name := str(p.relative_to(dep.destination))).startswith(prefix)
    )


def wait_until(condition: object, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def pc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = Path(tmp_path_factory.mktemp("pc"))
    return home


def state_files(home: Path) -> list[Path]:
    return [p for p in (home / "state").rglob("*") if p.is_file() and not p.name.startswith(".")]


def test_first_send_trusts_the_server_and_sends_with_return(
    sshd_deployment: Deployment, display: str, pc: Path
) -> None:
    dep = sshd_deployment
    folder = pc / "data"
    for thing in ("eprime", "biopac", "eyetracker"):
        (folder / thing).mkdir(parents=True)
    (folder / "eprime" / "gui-s01.txt").write_text("session one\n")
    (folder / "biopac" / "gui-s01.acq").write_bytes(b"not ticked")
    config = write_config(dep, pc / "client.toml", folder, user=dep.collector, pinned=False)
    gui = Gui(dep, display, pc, config)
    try:
        gui.shot("window")
        gui.keys(gui.main, "alt+p")  # the password field, by its mnemonic
        gui.type(gui.main, f"{dep.collector}-pw")
        gui.keys(gui.main, "Return")
        trust = gui.wait_for("^dittohead: new server$")
        gui.shot("trust")
        gui.keys(trust, "alt+t")  # Return would refuse: trusting takes a deliberate key
        wait_until(lambda: state_files(pc))
        time.sleep(0.5)
        gui.shot("sent")
        assert stored(dep, "eprime/gui-s01") == ["eprime/gui-s01.txt"]
        assert stored(dep, "biopac/gui-s01") == []  # the preset's thing only
        # Status asks the server what became of it (a dialog with the answer).
        gui.keys(gui.main, "alt+t")
        status = gui.wait_for("^dittohead: status$")
        gui.shot("status")
        gui.keys(status, "Escape")
    finally:
        gui.close()


def test_wrong_password_asks_again_then_says_so(
    sshd_deployment: Deployment, display: str, pc: Path
) -> None:
    dep = sshd_deployment
    folder = pc / "data"
    (folder / "eprime").mkdir(parents=True)
    (folder / "eprime" / "gui-wrong.txt").write_text("x\n")
    config = write_config(dep, pc / "client.toml", folder, user=dep.collector)
    gui = Gui(dep, display, pc, config)
    try:
        gui.keys(gui.main, "alt+p")
        gui.type(gui.main, "not-the-password")
        gui.keys(gui.main, "Return")
        for attempt in range(2):
            again = gui.wait_for("^dittohead: wrong password$")
            if attempt == 0:
                gui.shot("wrong-password")
            gui.type(again, "still-wrong")
            gui.keys(again, "Return")
            wait_until(lambda w=again: w not in gui.windows("^dittohead: wrong password$"))
        gui.wait_for("^dittohead: could not log in$")
        gui.shot("could-not-log-in")
        assert state_files(pc) == []
    finally:
        gui.close()


def test_unreachable_server_is_a_dialog(
    sshd_deployment: Deployment, display: str, pc: Path
) -> None:
    dep = sshd_deployment
    folder = pc / "data"
    (folder / "eprime").mkdir(parents=True)
    (folder / "eprime" / "x.txt").write_text("x\n")
    config = write_config(dep, pc / "client.toml", folder, user=dep.collector, port=free_port())
    gui = Gui(dep, display, pc, config)
    try:
        gui.keys(gui.main, "Return")
        dialog = gui.wait_for("^dittohead: server unreachable$")
        gui.shot("unreachable")
        gui.keys(dialog, "Return")  # OK closes it; the window stays
        wait_until(lambda: not gui.windows("^dittohead: server unreachable$"))
        assert gui.windows("^dittohead$")
    finally:
        gui.close()


def test_not_allowed_and_a_refused_name_are_dialogs(
    sshd_deployment: Deployment, display: str, pc: Path
) -> None:
    dep = sshd_deployment
    folder = pc / "data"
    (folder / "eprime").mkdir(parents=True)
    (folder / "eprime" / "y.txt").write_text("y\n")
    # The outsider collects for another study: the server refuses them this one.
    config = write_config(dep, pc / "client.toml", folder, user=dep.outsider, key=True)
    gui = Gui(dep, display, pc, config)
    try:
        gui.keys(gui.main, "Return")
        dialog = gui.wait_for("^dittohead: not allowed$")
        gui.shot("not-allowed")
        gui.keys(dialog, "Return")
    finally:
        gui.close()
    # A name Windows cannot hold: refused before anything travels, naming the file.
    (folder / "eprime" / "trial:1.txt").write_text("z\n")
    config = write_config(dep, pc / "client.toml", folder, user=dep.collector, key=True)
    gui = Gui(dep, display, pc, config)
    try:
        gui.keys(gui.main, "Return")
        gui.wait_for("^dittohead: file refused$")
        gui.shot("file-refused")
    finally:
        gui.close()


def test_cancel_stops_and_the_next_send_resumes(
    sshd_deployment: Deployment, display: str, pc: Path
) -> None:
    dep = sshd_deployment
    folder = pc / "data"
    (folder / "eprime").mkdir(parents=True)
    names = many_files(folder / "eprime", "gui-run", 30, 1 << 20)
    prefix = "eprime/gui-run"
    config = write_config(dep, pc / "client.toml", folder, user=dep.collector, key=True)
    # One file a batch: each is its own upload, so a cancel lands between confirmed parts.
    gui = Gui(dep, display, pc, config, DITTOHEAD_BATCH="1")
    try:
        gui.keys(gui.main, "Return")
        wait_until(lambda: state_files(pc))  # the first part is confirmed
        gui.keys(gui.main, "Escape")
        state = state_files(pc)[0]
        wait_until(lambda: _settled(state))
        gui.shot("stopped")
        assert not gui.windows("^dittohead: "), "a cancel is not an error"
        first = stored(dep, prefix)
        assert 0 < len(first) < len(names)
        gui.keys(gui.main, "Return")  # resume
        wait_until(lambda: len(stored(dep, prefix)) == len(names), timeout=60)
    finally:
        gui.close()
    # Each file stored exactly once: nothing the first Send confirmed was sent again.
    assert stored(dep, prefix) == sorted(f"eprime/{name}" for name in names)


def many_files(folder: Path, stem: str, count: int, size: int) -> list[str]:
    """`count` files of random bytes in `folder` (made already), named `stem` and a number."""
    names = [f"{stem}{i:03d}.bin" for i in range(count)]
    for i, name in enumerate(names):
        (folder / name).write_bytes(os.urandom(size) + bytes([i]))
    return names


def _settled(path: Path) -> bool:
    before = path.stat().st_mtime_ns
    time.sleep(1.0)
    return path.stat().st_mtime_ns == before


def test_a_preset_added_in_the_window_is_written_to_the_users_file(
    sshd_deployment: Deployment, display: str, pc: Path
) -> None:
    from dittohead.client import presets

    dep = sshd_deployment
    folder = pc / "data"
    (folder / "eyetracker").mkdir(parents=True)
    config = write_config(dep, pc / "client.toml", folder, user=dep.collector)
    gui = Gui(dep, display, pc, config)
    try:
        gui.keys(gui.main, "alt+n")
        editor = gui.wait_for("^dittohead: new preset$")
        # Name, Study, Folder, Things: Tab walks the fields in reading order.
        for number, text in enumerate(("eyes", "other", str(folder), "eyetracker")):
            if number:
                gui.keys(editor, "Tab")
            gui.type(editor, text)
        gui.shot("new-preset")
        gui.keys(editor, "Return")
        wait_until(lambda: not gui.windows("^dittohead: new preset$"))
    finally:
        gui.close()
    content = presets.read_file(str(config))
    assert content is not None
    added = {p.name: p for p in content.presets}["eyes"]
    assert (added.study, added.folder, added.things) == ("other", str(folder), ("eyetracker",))
    assert PRESET in {p.name for p in content.presets}  # the rest is kept


def test_closing_mid_send_asks_first_and_the_next_send_resumes(
    sshd_deployment: Deployment, display: str, pc: Path
) -> None:
    dep = sshd_deployment
    folder = pc / "data"
    (folder / "eprime").mkdir(parents=True)
    names = many_files(folder / "eprime", "gui-close", 80, 1 << 18)
    prefix = "eprime/gui-close"
    config = write_config(dep, pc / "client.toml", folder, user=dep.collector, key=True)
    gui = Gui(dep, display, pc, config, DITTOHEAD_BATCH="1")
    try:
        gui.keys(gui.main, "Return")
        wait_until(lambda: state_files(pc))  # the first part is confirmed
        state = state_files(pc)[0]
        gui.close_button(gui.main)
        question = gui.wait_for("^dittohead: stop sending\\?$")
        gui.shot("stop-sending")
        # Return is "Keep sending": a close one did not mean must not stop a send.
        before = state.stat().st_mtime_ns
        gui.keys(question, "Return")
        wait_until(lambda: not gui.windows("^dittohead: stop sending"))
        wait_until(lambda: state.stat().st_mtime_ns != before)  # more parts confirmed
        assert gui.windows("^dittohead$") and gui.proc.poll() is None
        gui.close_button(gui.main)
        question = gui.wait_for("^dittohead: stop sending\\?$")
        gui.keys(question, "alt+s")  # Stop and close
        assert gui.proc.wait(timeout=WAIT) == 0
    finally:
        gui.close()
    first = stored(dep, prefix)
    assert 0 < len(first) < len(names), "the close stopped the send part-way"
    # The next Send goes on from what the server confirmed, in a new window.
    gui = Gui(dep, display, pc, config, DITTOHEAD_BATCH="1000")
    try:
        gui.keys(gui.main, "Return")
        wait_until(lambda: len(stored(dep, prefix)) == len(names), timeout=60)
    finally:
        gui.close()
    assert stored(dep, prefix) == sorted(f"eprime/{name}" for name in names)


def test_a_key_with_a_passphrase_asks_for_it(
    sshd_deployment: Deployment, display: str, pc: Path
) -> None:
    dep = sshd_deployment
    folder = pc / "data"
    (folder / "eprime").mkdir(parents=True)
    (folder / "eprime" / "gui-phrase.txt").write_text("locked key\n")
    # The collector's own key, with a passphrase on this copy (the public half is the same).
    key = pc / "id_phrase"
    shutil.copyfile(dep.key(dep.collector), key)
    key.chmod(0o600)
    run("ssh-keygen", "-q", "-p", "-f", key, "-P", "", "-N", "open sesame")
    config = write_config(dep, pc / "client.toml", folder, user=dep.collector, key=key)
    gui = Gui(dep, display, pc, config)
    try:
        gui.keys(gui.main, "Return")
        asked = gui.wait_for("^dittohead: passphrase$")
        gui.shot("passphrase")
        gui.type(asked, "open sesame")
        gui.keys(asked, "Return")
        wait_until(lambda: state_files(pc))
        assert not gui.windows("^dittohead: (?!$)"), "no error after the right passphrase"
    finally:
        gui.close()
    assert stored(dep, "eprime/gui-phrase") == ["eprime/gui-phrase.txt"]


def test_browse_picks_the_folder_and_lists_its_things(
    sshd_deployment: Deployment, display: str, pc: Path
) -> None:
    dep = sshd_deployment
    folder = pc / "data"
    (folder / "eprime").mkdir(parents=True)
    other = pc / "other-session"
    (other / "biopac").mkdir(parents=True)
    (other / "biopac" / "gui-browsed.acq").write_bytes(b"picked with Browse")
    config = write_config(dep, pc / "client.toml", folder, user=dep.collector, key=True, things=())
    gui = Gui(dep, display, pc, config)
    try:
        gui.keys(gui.main, "alt+b")
        chooser = gui.wait_for("^dittohead: the folder to send$")
        gui.shot("browse")
        # Tk's own folder dialog on X11: its Selection field opens selected, and takes a
        # typed path in place of the preset's folder.
        gui.type(chooser, str(other))
        gui.keys(chooser, "Return")  # Return opens the typed folder in the dialog …
        time.sleep(0.5)
        gui.keys(chooser, "alt+o")  # … and OK picks it
        wait_until(lambda: not gui.windows("^dittohead: the folder to send$"))
        gui.shot("browsed")
        # The preset sends the whole folder: the picked folder's things, all ticked.
        gui.keys(gui.main, "Return")
        wait_until(lambda: bool(stored(dep, "biopac/gui-browsed")), timeout=60)
    finally:
        gui.close()
    assert stored(dep, "biopac/gui-browsed") == ["biopac/gui-browsed.acq"]
