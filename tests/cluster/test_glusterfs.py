"""On a real GlusterFS 10 volume over FUSE: what each primitive does there (the facts in
docs/admins/scale-out.md), that `fscaps` chooses the fallbacks by itself, and a whole
deployment (sshd, receiver, processor, verify) with its dropbox and study tree on the volume."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dittohead.receiver import fscaps, fsops
from tests.integration.harness import Deployment, deployment
from tests.support import gluster
from tests.support.invariants import tree_files

pytestmark = [pytest.mark.cluster, pytest.mark.root]


@pytest.fixture
def folders(glusterfs: gluster.Volume) -> Iterator[tuple[Path, Path]]:
    """One fresh folder on the volume, as seen through each of the two mounts."""
    name = f"t{os.urandom(4).hex()}"
    first = glusterfs.mounts[0] / name
    first.mkdir()
    yield first, glusterfs.mounts[1] / name
    shutil.rmtree(first)


@pytest.fixture
def fd(folders: tuple[Path, Path]) -> Iterator[int]:
    fd = os.open(folders[0], fsops.DIR_FLAGS)
    yield fd
    os.close(fd)


def test_renameat2_noreplace_is_refused_where_the_target_is_missing(
    folders: tuple[Path, Path], fd: int
) -> None:
    """The kernel's VFS answers EEXIST for a target that exists before asking the file
    system; GlusterFS's FUSE bridge has no RENAME2, so every other case is EINVAL."""
    (folders[0] / "a").write_bytes(b"a")
    (folders[0] / "b").write_bytes(b"b")
    (folders[0] / "d").mkdir()
    for src, dst, err in (
        ("a", "c", errno.EINVAL),
        ("a", "b", errno.EEXIST),
        ("d", "e", errno.EINVAL),
    ):
        with pytest.raises(OSError) as caught:
            fsops.renameat2(fd, src, fd, dst, noreplace=True)
        assert caught.value.errno == err, (src, dst)
    # and a plain rename() of a folder replaces an empty one, as everywhere
    (folders[0] / "empty").mkdir()
    os.rename(folders[0] / "d", folders[0] / "empty")
    assert not (folders[0] / "d").exists()


def test_o_tmpfile_is_refused_and_link_and_o_excl_work(folders: tuple[Path, Path]) -> None:
    with pytest.raises(OSError) as caught:
        os.open(folders[0], fsops.O_TMPFILE | os.O_WRONLY, 0o600)
    assert caught.value.errno == errno.EOPNOTSUPP
    (folders[0] / "a").write_bytes(b"a")
    os.link(folders[0] / "a", folders[0] / "b")
    with pytest.raises(FileExistsError):
        os.link(folders[0] / "a", folders[0] / "b")
    # O_EXCL through the other mount (the other "host") sees the name at once
    with pytest.raises(FileExistsError):
        os.open(folders[1] / "b", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


def test_syncfs_reaches_no_brick_and_fsync_does(
    glusterfs: gluster.Volume, folders: tuple[Path, Path]
) -> None:
    """What `volume profile` counts at the brick: syncfs succeeds but no FSYNC arrives, so it
    is not honest here; fsync of a file and of a folder arrive as FSYNC and FSYNCDIR."""
    fd = os.open(folders[0] / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    dir_fd = os.open(folders[0], fsops.DIR_FLAGS)
    try:
        os.write(fd, b"x" * 100_000)
        glusterfs.profile()
        fsops.syncfs(fd)
        fsops.syncfs(dir_fd)
        assert not {"FSYNC", "FSYNCDIR"} & glusterfs.profile()
        os.fsync(fd)
        os.fsync(dir_fd)
        assert {"FSYNC", "FSYNCDIR"} <= glusterfs.profile()
    finally:
        os.close(fd)
        os.close(dir_fd)


def test_fcntl_locks_hold_across_the_two_mounts(folders: tuple[Path, Path]) -> None:
    (folders[0] / "lock").write_bytes(b"")
    one = os.open(folders[0] / "lock", os.O_RDWR)
    two = os.open(folders[1] / "lock", os.O_RDWR)
    try:
        fscaps.ofd_lock(one, blocking=False)  # as dittohead-admin check probes
        with pytest.raises(BlockingIOError):
            fscaps.ofd_lock(two, blocking=False)
    finally:
        os.close(one)
        os.close(two)
    one = os.open(folders[0] / "lock", os.O_RDWR)
    two = os.open(folders[1] / "lock", os.O_RDWR)
    try:
        fcntl.flock(one, fcntl.LOCK_EX | fcntl.LOCK_NB)  # sent to the bricks as a lock too
        with pytest.raises(BlockingIOError):
            fcntl.flock(two, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(one)
        os.close(two)
    # A POSIX lock (lockf) of a process killed on "host" 2 is let go: the next can take it.
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        held = os.open(folders[1] / "lock", os.O_RDWR)
        fcntl.lockf(held, fcntl.LOCK_EX)
        os.kill(os.getpid(), 9)
    os.waitpid(child, 0)
    again = os.open(folders[0] / "lock", os.O_RDWR)
    try:
        fcntl.lockf(again, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(again)


def test_posix_acls_and_openat2_work(folders: tuple[Path, Path], fd: int) -> None:
    (folders[0] / "f").write_bytes(b"f")
    subprocess.run(["setfacl", "-m", "u:nobody:r", folders[0] / "f"], check=True)
    acl = subprocess.run(["getfacl", "-c", folders[1] / "f"], check=True, capture_output=True)
    assert b"user:nobody:r--" in acl.stdout
    (folders[0] / "link").symlink_to("f")
    resolve = fsops.RESOLVE_BENEATH | fsops.RESOLVE_NO_SYMLINKS
    os.close(fsops.openat2(fd, "f", os.O_RDONLY, resolve=resolve))
    with pytest.raises(OSError) as caught:
        fsops.openat2(fd, "link", os.O_RDONLY, resolve=resolve)
    assert caught.value.errno == errno.ELOOP
    # sync_file_range is accepted (a head start only, as everywhere)
    with fsops.opened("f", os.O_RDWR, dir_fd=fd) as f:
        assert fsops.start_writeback(f, 0, 1)


def test_fscaps_chooses_the_fallbacks_by_itself_and_says_so_once(
    folders: tuple[Path, Path], fd: int, caplog: pytest.LogCaptureFixture
) -> None:
    fscaps.forget()
    found = fscaps.probe(fd)
    assert found.fstype == "fuse.glusterfs"
    assert found.modes == {
        "rename_noreplace": False,
        "tmpfile": False,
        "syncfs": False,
        "openat2": True,
        "sync_file_range": True,
    }
    assert found.locks is True
    (folders[0] / "a").write_bytes(b"a")
    (folders[0] / "b").write_bytes(b"b")
    (folders[0] / "d").mkdir()
    (folders[0] / "empty").mkdir()
    with caplog.at_level(logging.INFO, logger="dittohead.receiver.fsmodes"):
        fscaps.rename_noreplace(fd, "a", fd, "c")
        with pytest.raises(FileExistsError):
            fscaps.rename_noreplace(fd, "c", fd, "b")
        with pytest.raises(FileExistsError):  # rename(2) would have replaced it
            fscaps.rename_noreplace(fd, "d", fd, "empty")
        fscaps.rename_noreplace(fd, "d", fd, "e")
        fscaps.create_new(fd, "n", [b"new"])
        with pytest.raises(FileExistsError):
            fscaps.create_new(fd, "n", [b"other"])
    assert sorted(os.listdir(folders[1])) == ["b", "c", "e", "empty", "n"]
    assert (folders[1] / "n").read_bytes() == b"new"
    lines = [r.getMessage() for r in caplog.records]
    assert len([line for line in lines if "rename_noreplace not available" in line]) == 1
    assert len([line for line in lines if "tmpfile not available" in line]) == 1
    assert all("fuse.glusterfs" in line for line in lines), lines


@pytest.fixture(scope="module")
def on_glusterfs(glusterfs: gluster.Volume) -> Iterator[Deployment]:
    """A whole deployment (users, config, dropbox, study tree, sshd) below the first mount."""
    base = Path(tempfile.mkdtemp(prefix="deploy-", dir=glusterfs.mounts[0]))
    try:
        yield from deployment(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_uploads_through_the_receiver_are_finalized_on_glusterfs(
    on_glusterfs: Deployment,
) -> None:
    dep = on_glusterfs
    folder = dep.base / "pc" / "s01"
    (folder / "eprime").mkdir(parents=True)
    (folder / "biopac").mkdir()
    (folder / "eprime" / "s01.txt").write_text("subject s01\n")
    (folder / "biopac" / "s01.acq").write_bytes(os.urandom(300_000))
    state = dep.base / "state-s01.json"
    sent = dep.send(dep.collector, folder, state=state)
    assert sent.returncode == 0, sent.stderr
    done = dep.process()
    assert done.returncode == 0, done.stderr
    # The processor found the fallbacks by itself, and said so once for the volume's mount.
    assert done.stderr.count("rename_noreplace not available") == 1, done.stderr
    assert done.stderr.count("syncfs not available") == 1, done.stderr
    assert os.listdir(dep.inbox) == []
    (folder / "eprime" / "s01.txt").write_text("subject s01, corrected\n")
    again = dep.send(dep.collector, folder, state=state)
    assert again.returncode == 0, again.stderr
    assert dep.process().returncode == 0
    files = tree_files(dep.destination)
    assert files == {
        "eprime/s01.txt": b"subject s01\n",
        "eprime/s01~2.txt": b"subject s01, corrected\n",
        "biopac/s01.acq": (folder / "biopac" / "s01.acq").read_bytes(),
    }
    history = dep.admin("history", "--study", dep.study, "--json")
    assert history.returncode == 0, history.stderr
    stored = sorted(
        r["stored_as"]
        for r in map(json.loads, history.stdout.splitlines())
        if r["outcome"] == "stored"
    )
    assert stored == sorted(files)
    verify = dep.admin("verify", "--study", dep.study)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # Nothing left behind by the fallbacks: no placeholder, no temporary file.
    study = dep.base / "dropbox" / dep.study
    assert os.listdir(study / "processing") == [".claims"]  # the hosts' shared lock
    assert os.listdir(study / "processing" / ".claims") == ["lock"]
    assert len(os.listdir(study / "done")) == 2
    check = dep.admin("check")
    lines = [line for line in check.stdout.splitlines() if line.startswith("file system: ")]
    named = {line.split(" (")[0].removeprefix("file system: ") for line in lines}
    assert {str(dep.base / "dropbox"), str(dep.inbox), str(dep.destination)} <= named, lines
    for line in lines:
        assert "(fuse.glusterfs)" in line, line
        assert "rename_noreplace=fallback tmpfile=fallback syncfs=fallback" in line, line
        assert "fcntl-locks=work" in line, line


def test_a_mount_without_the_acl_option_refuses_acls_and_the_probe_says_so(
    glusterfs: gluster.Volume,
) -> None:
    point = glusterfs.base / "noacl"
    point.mkdir()
    subprocess.run(
        ["mount", "-t", "glusterfs", f"{glusterfs.server}:/{glusterfs.name}", point], check=True
    )
    try:
        fd = os.open(point, fsops.DIR_FLAGS)
        try:
            found = fscaps.probe(fd)
        finally:
            os.close(fd)
        assert found.acls is False
        assert "acls=REFUSED" in list(fscaps.describe(found))
        with_acl = os.open(glusterfs.mounts[0], fsops.DIR_FLAGS)
        try:
            assert fscaps.probe(with_acl).acls is True
        finally:
            os.close(with_acl)
    finally:
        subprocess.run(["umount", point], check=True)
