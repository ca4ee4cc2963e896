"""fsync with --durability remote, and unmount with and without draining."""

import hashlib
import os

from ckptfs.lake import Lake
from ckptfs.store import LocalDirStore


def lake_tree(tmp_path):
    return Lake(LocalDirStore(str(tmp_path / "lake"))).read_namespace()


def test_fsync_with_remote_durability_returns_once_published(mounter, tmp_path):
    mount = mounter(extra=["--durability", "remote"])
    with open(mount.path("ckpt.pt"), "wb") as file:
        file.write(os.urandom(5_000_000))
        file.flush()
        os.fsync(file.fileno())
        # Without any sync or close, the version is already in the lake.
        entry = lake_tree(tmp_path).entries[b"ckpt.pt"]
        assert entry.size == 5_000_000 and entry.manifest is not None
    mount.assert_clean_log()


def write_big_file(mount) -> bytes:
    data = os.urandom(64 * 1024 * 1024)
    with open(mount.path("big"), "wb") as file:
        file.write(data)
    return data


def test_unmount_drains_by_default(mounter, tmp_path):
    mount = mounter()
    data = write_big_file(mount)
    mount.unmount()  # fusermount3 -u, no sync: the daemon drains before exiting
    assert lake_tree(tmp_path).entries[b"big"].size == len(data)
    mount.assert_clean_log()


def test_unmount_without_draining_resumes_at_the_next_mount(mounter, tmp_path):
    mount = mounter()
    data = write_big_file(mount)
    result = mount.cli("unmount", "--no-drain", mount.mountpoint)
    assert "left queued" in result.stdout
    mount.process.wait(timeout=60)
    again = mounter()
    again.sync()
    assert lake_tree(tmp_path).entries[b"big"].size == len(data)
    assert hashlib.sha256(open(again.path("big"), "rb").read()).digest() == hashlib.sha256(data).digest()
    again.assert_clean_log()
