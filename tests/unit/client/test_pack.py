"""pack: a valid pax tar ending with a truthful manifest, produced in constant memory."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dittohead.client.pack import BLOCK, CHUNK_SIZE, READ_SIZE, iter_stream
from dittohead.client.plan.scan import path_key, scan
from dittohead.core.errors import LocalFileError, NameRejected
from dittohead.core.manifest import MANIFEST_PATH, parse_manifest
from dittohead.core.names import NameSet, check_path, parents

from .conftest import write_tree

LONG = "a-rather-long-folder-name-" * 5 + "/" + "and-an-even-longer-file-name-" * 4 + ".txt"


def _members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        for info in tar:
            content = b""
            if info.isreg():
                handle = tar.extractfile(info)
                assert handle is not None
                content = handle.read()
            out.append((info, content))
    return out


def _pad(n: int) -> int:
    return -n % BLOCK


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, bytes]:
    files = {
        "eprime/s01.txt": b"subject one\n",
        "eprime/s02.txt": b"",
        "biopac/run/1.acq": os.urandom(3000),
        "Übersicht.csv": "größe,wert\n".encode(),
        LONG: b"long name",
        "big.bin": os.urandom(READ_SIZE + 12345),
    }
    write_tree(tmp_path / "d", files)
    (tmp_path / "d" / "empty" / "inner").mkdir(parents=True)
    os.utime(tmp_path / "d" / "eprime" / "s01.txt", ns=(1_600_000_000_900_000_000,) * 2)
    return files


def test_stream_parses_and_holds_exactly_the_files(tmp_path: Path, tree: dict[str, bytes]) -> None:
    plan = scan(tmp_path / "d")
    pack = iter_stream(plan)
    data = b"".join(pack)

    members = _members(data)
    names = [info.name for info, _ in members]
    infos = {info.name: (info, content) for info, content in members}

    # manifest last, every file once with its bytes
    assert names[-1] == MANIFEST_PATH
    files = {i.name: c for i, c in members if i.isreg() and i.name != MANIFEST_PATH}
    assert files == tree
    # every folder that holds a file, plus the empty ones, each before what it holds
    dirs = [i.name for i, _ in members if i.isdir()]
    expected_dirs = {p for f in tree for p in parents(f)} | {"empty", "empty/inner"}
    assert set(dirs) == expected_dirs
    position = {name: n for n, name in enumerate(names)}
    for name in names[:-1]:
        for parent in parents(name):
            assert position[parent] < position[name]
    # header policy: ours, not the local machine's
    for info, _ in members:
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
        assert isinstance(info.mtime, int)
        assert info.mode == (0o755 if info.isdir() else 0o644)
    assert infos["eprime/s01.txt"][0].mtime == 1_600_000_000
    # the manifest is valid, and tells the truth
    manifest = parse_manifest(infos[MANIFEST_PATH][1])
    assert manifest == pack.manifest
    assert pack.manifest_json == infos[MANIFEST_PATH][1]
    assert pack.manifest_sha256 == hashlib.sha256(pack.manifest_json).hexdigest()
    assert {e.path: (e.size, e.sha256) for e in manifest.entries} == {
        p: (len(c), hashlib.sha256(c).hexdigest()) for p, c in tree.items()
    }
    # two zero blocks end it, nothing else follows
    assert data.endswith(bytes(2 * BLOCK))
    assert len(data) % BLOCK == 0


def test_gnu_tar_lists_the_same_members(tmp_path: Path, tree: dict[str, bytes]) -> None:
    gnu_tar = shutil.which("tar")
    assert gnu_tar is not None, "GNU tar is part of every Debian system"
    data = b"".join(iter_stream(scan(tmp_path / "d")))
    listed = subprocess.run(
        [gnu_tar, "-tf", "-"],
        input=data,
        capture_output=True,
        check=True,
        env={"LC_ALL": "C.UTF-8", "PATH": os.environ.get("PATH", "")},
    )
    assert listed.stderr == b""
    names = listed.stdout.decode("utf-8").splitlines()
    assert names[-1] == MANIFEST_PATH
    assert set(tree) <= set(names)
    assert LONG in names and "Übersicht.csv" in names
    # and it extracts to the same bytes
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run([gnu_tar, "-xf", "-", "-C", str(out)], input=data, check=True)
    for rel, content in tree.items():
        assert (out / rel).read_bytes() == content


def test_short_ascii_names_cost_no_pax_headers(tmp_path: Path) -> None:
    # docs/design.md, "Performance by design": an integer mtime and no user names keep each
    # member to one header block.
    files = {f"d{i}/f{j}.txt": os.urandom(i * 100 + j) for i in range(3) for j in range(4)}
    write_tree(tmp_path / "d", files)
    pack = iter_stream(scan(tmp_path / "d"))
    data = b"".join(pack)
    dirs = {p for f in files for p in parents(f)}
    manifest = len(pack.manifest_json)
    expected = (
        BLOCK * len(dirs)
        + sum(BLOCK + len(c) + _pad(len(c)) for c in files.values())
        + BLOCK
        + manifest
        + _pad(manifest)
        + 2 * BLOCK
    )
    assert len(data) == expected


def test_many_small_files_are_batched_into_few_writes(tmp_path: Path) -> None:
    write_tree(tmp_path / "d", {f"f{i:04d}.txt": b"x" * 300 for i in range(2000)})
    chunks = list(iter_stream(scan(tmp_path / "d")))
    total = sum(len(c) for c in chunks)
    assert len(chunks) <= total // CHUNK_SIZE + 2
    assert max(len(c) for c in chunks) <= READ_SIZE


def test_a_large_file_streams_in_constant_memory(tmp_path: Path) -> None:
    path = tmp_path / "d" / "big.dat"
    path.parent.mkdir()
    size = 64 << 20
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: cheap to make, still 64 MiB to read and hash
        f.seek(size // 2)
        f.write(b"middle")
    pack = iter_stream(scan(tmp_path / "d"))
    sha = hashlib.sha256()
    largest = 0
    tracemalloc.start()
    try:
        for chunk in pack:
            largest = max(largest, len(chunk))
            sha.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert largest <= READ_SIZE
    assert peak < 8 * READ_SIZE, f"peak {peak} bytes while streaming a {size} byte file"
    assert pack.manifest.byte_count == size
    expected = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            expected.update(block)
    assert pack.manifest.entries[0].sha256 == expected.hexdigest()


@pytest.mark.parametrize("change", ["grow", "shrink", "rewrite"])
def test_a_file_changing_while_read_is_refused(tmp_path: Path, change: str) -> None:
    root = write_tree(tmp_path / "d", {"a.txt": b"a", "rec.edf": os.urandom(3 * READ_SIZE)})
    pack = iter_stream(scan(root))
    chunks = iter(pack)
    pulled = b""
    while b"rec.edf" not in pulled:  # up to the header of the file being recorded
        pulled += next(chunks)
    next(chunks)  # its first megabyte went out
    target = root / "rec.edf"
    if change == "grow":
        with open(target, "ab") as f:
            f.write(b"more samples")
    elif change == "shrink":
        os.truncate(target, READ_SIZE)
    else:
        st_ = target.stat()
        os.utime(target, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000))
    with pytest.raises(LocalFileError) as info:
        for _ in chunks:
            pass
    assert "rec.edf changed while it was being sent" in info.value.message
    assert "nothing was stored" in info.value.message
    with pytest.raises(RuntimeError):
        _ = pack.manifest  # no manifest: the server cannot take this for a complete upload


def test_a_file_changed_or_removed_after_the_scan_is_refused(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "d", {"a.txt": b"a", "b.txt": b"b"})
    plan = scan(root)
    (root / "a.txt").write_bytes(b"aa")
    with pytest.raises(LocalFileError, match=r"a\.txt changed"):
        b"".join(iter_stream(plan))
    plan = scan(root)
    (root / "b.txt").unlink()
    with pytest.raises(LocalFileError, match=r"b\.txt changed"):
        b"".join(iter_stream(plan))


def test_a_file_replaced_by_a_symlink_after_the_scan_is_not_followed(tmp_path: Path) -> None:
    secret = write_tree(tmp_path / "outside", {"secret": b"x"}) / "secret"
    root = write_tree(tmp_path / "d", {"a.txt": b"x"})
    plan = scan(root)
    (root / "a.txt").unlink()
    (root / "a.txt").symlink_to(secret)
    with pytest.raises(LocalFileError, match="changed"):
        b"".join(iter_stream(plan))


def test_the_manifest_is_known_only_after_the_stream(tmp_path: Path) -> None:
    pack = iter_stream(scan(write_tree(tmp_path / "d", {"a": b"a"})))
    with pytest.raises(RuntimeError):
        _ = pack.manifest_sha256
    b"".join(pack)
    assert pack.manifest.file_count == 1
    with pytest.raises(RuntimeError):
        b"".join(pack)  # a second pass would read the files twice


_NAME = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), max_codepoint=0x2FF),
    min_size=1,
    max_size=40,
)


def _sendable(paths: set[str]) -> bool:
    """Whether the name policy takes these paths together (clashes are scan's business)."""
    names = NameSet()
    try:
        for path in sorted(paths):
            check_path(path)
            names.add_file(path)
    except NameRejected:
        return False
    return True


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tree=st.dictionaries(
        st.lists(_NAME, min_size=1, max_size=3).map("/".join),
        st.binary(max_size=2000),
        min_size=1,
        max_size=6,
    )
)
def test_any_tree_round_trips(
    tmp_path_factory: pytest.TempPathFactory, tree: dict[str, bytes]
) -> None:
    root = tmp_path_factory.mktemp("rt")
    assume(_sendable(set(tree)))
    write_tree(root, tree)
    plan = scan(root)
    data = b"".join(iter_stream(plan))
    members = _members(data)
    assert members[-1][0].name == MANIFEST_PATH
    got = {i.name: c for i, c in members[:-1] if i.isreg()}
    assert got == {f.path: (root / f.path).read_bytes() for f in plan.files}
    names = [i.name for i, _ in members[:-1]]
    assert names == sorted(names, key=path_key)
    assert json.loads(members[-1][1])["files"] == len(plan.files)
