"""Upload while writing: a file still open for writing has its prefix in the lake before close.

Rounds start after 8 MiB of new bytes here (the smallest allowed), so files of tens of MiB go
through several rounds. Every test reads the result back from a fresh mount with an empty cache,
so what is checked is what the lake holds.
"""

import os
import time

import pytest

from ckptfs.engine.chunks import SMALL_CHUNK
from ckptfs.lake.chunker import Chunker

MIB = 1024 * 1024
ROUND = ["--upload-while-writing", "8M"]


def wait_for(predicate, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def lake_copy(mounter, store_url, extra, cache: str, name: str) -> bytes:
    fresh = mounter(store_url, extra, cache=cache)
    with open(fresh.path(name), "rb") as file:
        return file.read()


def early_uploaded(mount) -> int:
    return mount.status()["dirty_uploaded_bytes"]


def test_prefix_is_in_the_lake_before_close_and_the_file_dedups_as_a_whole(mounter, lake_url):
    store_url, extra = lake_url
    mount = mounter(store_url, extra + ROUND)
    data = os.urandom(40 * MIB)
    with open(mount.path("big.bin"), "wb") as file:
        file.write(data[:30 * MIB])
        file.flush()
        uploaded = wait_for(lambda: early_uploaded(mount), "the prefix of an open file to be uploaded")
        assert 0 < uploaded <= 30 * MIB
        assert mount.status()["dirty_files"] == 1  # still open: nothing is committed yet
        file.write(data[30 * MIB:])
    mount.sync()
    assert mount.status()["committed_bytes"] == len(data)
    new_before = mount.status()["new_chunk_bytes"]
    # Written again in one go and sealed, the same bytes find every chunk already stored (the cut
    # points of the early rounds are the cut points of the whole file), but for those under
    # SMALL_CHUNK, which are always packed again next to their neighbours (random data has some).
    with open(mount.path("again.bin"), "wb") as file:
        file.write(data)
    mount.sync()
    small = sum(cut.length for cut in Chunker().cut(data) if cut.length < SMALL_CHUNK)
    assert mount.status()["new_chunk_bytes"] == new_before + small
    assert lake_copy(mounter, store_url, extra, "fresh", "big.bin") == data


@pytest.mark.parametrize("change", ["rewrite", "truncate"])
def test_a_change_below_the_uploaded_prefix_drops_the_early_work(mounter, tmp_path, change):
    store_url = f"file://{tmp_path}/lake"
    mount = mounter(store_url, ROUND)
    data = bytearray(os.urandom(40 * MIB))
    fd = os.open(mount.path("f"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data[:24 * MIB])
        wait_for(lambda: early_uploaded(mount), "the prefix to be uploaded")
        if change == "rewrite":
            os.pwrite(fd, b"R" * 4096, 1 * MIB)
            data[1 * MIB:1 * MIB + 4096] = b"R" * 4096
        else:
            os.ftruncate(fd, 2 * MIB)
            del data[2 * MIB:24 * MIB]
            os.lseek(fd, 0, os.SEEK_END)
        assert early_uploaded(mount) == 0
        os.write(fd, data[len(data) - 16 * MIB:])
    finally:
        os.close(fd)
    mount.sync()
    assert lake_copy(mounter, store_url, [], "fresh", "f") == bytes(data)


def test_writes_past_the_prefix_keep_it(mounter, tmp_path):
    # A writer that seeks back to patch a header after the prefix's end keeps the early work.
    store_url = f"file://{tmp_path}/lake"
    mount = mounter(store_url, ROUND)
    data = bytearray(os.urandom(30 * MIB))
    fd = os.open(mount.path("f"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        # Rounds go on while 8 MiB more than the prefix is written: once the prefix is within
        # 8 MiB of the end, the last round is over.
        def settled() -> int:
            done = early_uploaded(mount)
            return done if done > len(data) - 8 * MIB else 0

        uploaded = wait_for(settled, "the prefix to reach the last 8 MiB")
        assert uploaded < len(data)
        os.pwrite(fd, b"H" * 100, uploaded)
        data[uploaded:uploaded + 100] = b"H" * 100
        assert early_uploaded(mount) == uploaded
    finally:
        os.close(fd)
    mount.sync()
    assert lake_copy(mounter, store_url, [], "fresh", "f") == bytes(data)


def test_auto_is_on_only_with_cores_to_spare(mounter, tmp_path):
    mount = mounter(f"file://{tmp_path}/lake", ["--upload-while-writing", "auto"])
    expected = 32 * MIB if (os.cpu_count() or 1) >= 4 else 0
    assert mount.status()["upload_while_writing_bytes"] == expected


def test_off(mounter, tmp_path):
    mount = mounter(f"file://{tmp_path}/lake", ["--upload-while-writing", "0"])
    assert mount.status()["upload_while_writing_bytes"] == 0
    with open(mount.path("f"), "wb") as file:
        file.write(os.urandom(20 * MIB))
        file.flush()
        time.sleep(1)
        assert early_uploaded(mount) == 0
    mount.sync()
    assert mount.status()["committed_bytes"] == 20 * MIB
