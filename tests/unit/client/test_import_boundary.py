"""The collector's command loads nothing from the server side and nothing Linux-only of its own.

Checked in a fresh ``python -I`` so that nothing imported by the test run itself can hide a
stray import.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# POSIX-only standard modules: the client must run on Windows, where they do not exist.
POSIX_ONLY = ("fcntl", "pwd", "grp", "termios", "resource", "posix")

PROBE = textwrap.dedent(
    f"""
    import json, sys, traceback

    POSIX_ONLY = {POSIX_ONLY!r}
    ours = []

    class Watch:
        # Records which file imported a POSIX-only module. The standard library and asyncssh
        # import some of them on POSIX behind a platform check; dittohead's own code must not.
        def find_spec(self, name, path=None, target=None):
            if name in POSIX_ONLY:
                frames = [f for f in traceback.extract_stack()[:-1] if "importlib" not in f.filename
                          and not f.filename.startswith("<")]
                importer = frames[-1].filename if frames else "?"
                if "/dittohead/" in importer.replace("\\\\", "/"):
                    ours.append((name, importer))
            return None

    sys.meta_path.insert(0, Watch())
    import dittohead.client.cli
    print(json.dumps({{"modules": sorted(sys.modules), "ours": ours}}))
    """
)


def _probe() -> dict[str, list[object]]:
    done = subprocess.run(
        [sys.executable, "-I", "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    result: dict[str, list[object]] = json.loads(done.stdout)
    return result


def test_cli_import_loads_no_receiver_and_no_server_dependencies() -> None:
    modules = _probe()["modules"]
    assert "dittohead.client.cli" in modules
    assert [m for m in modules if str(m).startswith("dittohead.receiver")] == []
    for server_only in ("sdnotify", "yaml", "pydantic", "aiosmtpd"):
        assert server_only not in modules, f"{server_only} is loaded by the client"


def test_client_code_imports_no_posix_only_module() -> None:
    assert _probe()["ours"] == []
