"""The cache disk itself fills up: the write fails with ENOSPC and nothing already written is damaged."""

import errno
import hashlib
import os
import shutil
import subprocess

import pytest


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs for the cache dir, unmounted at teardown."""
    path = tmp_path / "small"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(path)], check=True)
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_cache_disk_gives_enospc_and_keeps_what_was_written(mounter, tmp_path, small_disk):
    # The budget is larger than the disk, so the disk fills before backpressure would start.
    mount = mounter(extra=["--cache-size", "1G"], cache="small/cache")
    first = os.urandom(16 * 1024 * 1024)
    with open(mount.path("first"), "wb") as file:
        file.write(first)
    fd = os.open(mount.path("too-big"), os.O_WRONLY | os.O_CREAT, 0o644)
    with pytest.raises(OSError) as error:
        for _ in range(64):
            os.write(fd, os.urandom(1024 * 1024))
    assert error.value.errno == errno.ENOSPC
    os.close(fd)  # sealing what was written needs only the space kept for the journal
    os.unlink(mount.path("too-big"))
    assert hashlib.sha256(open(mount.path("first"), "rb").read()).digest() == hashlib.sha256(first).digest()
    mount.sync()
    with open(mount.path("after"), "wb") as file:  # space is back: the mount carries on
        file.write(b"still working")
    mount.unmount()
    shutil.rmtree(small_disk / "cache")
    fresh = mounter(cache="fresh")
    assert hashlib.sha256(open(fresh.path("first"), "rb").read()).digest() == hashlib.sha256(first).digest()
    assert open(fresh.path("after"), "rb").read() == b"still working"
    fresh.assert_clean_log()
    mount.assert_clean_log()
