"""Files larger than the cache: their uploaded prefix leaves the cache disk while they are written.

Mounts here have `--cache-size 64M`: 16 MiB for fetched chunks, 4 MiB for the journal, 44 MiB for
staging files, spilling from 38.5 MiB. Files of 160 MiB
are written through one open descriptor, so only spilling keeps the cache disk under its size.
Upload while writing is left at its default (off on a 2-core machine): spilling must not need it.
Results are read back from a fresh mount with an empty cache, so what is checked is what the lake holds.
"""

import json
import os
import threading
import time

import pytest

from tests.helpers import cli_in_process

MIB = 1024 * 1024
CACHE = ["--cache-size", "64M"]
FILE_MIB = 160


def cache_disk_bytes(cache_dir: str) -> int:
    used = 0
    for directory, _, files in os.walk(cache_dir):
        for name in files:
            try:
                used += os.stat(os.path.join(directory, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return used


class DiskSampler:
    """The peak of the cache dir's allocated bytes, sampled every 20 ms in a thread."""

    def __init__(self, cache_dir: str) -> None:
        self.cache_dir, self.peak, self._done = cache_dir, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, cache_disk_bytes(self.cache_dir))
            time.sleep(0.02)

    def __enter__(self) -> "DiskSampler":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._done.set()
        self._thread.join()


def fresh_read(mounter, store_url, extra, cache: str, name: str) -> bytes:
    fresh = mounter(store_url, extra, cache=cache, name=f"mnt-{cache}")
    with open(fresh.path(name), "rb") as file:
        return file.read()


def write_in_blocks(file, data: bytes) -> None:
    for start in range(0, len(data), MIB):
        file.write(data[start:start + MIB])


def test_a_file_larger_than_the_cache_stays_within_cache_size_and_reads_back(mounter, lake_url):
    store_url, extra = lake_url
    mount = mounter(store_url, extra + CACHE)
    data = os.urandom(FILE_MIB * MIB)
    with DiskSampler(mount.cache_dir) as sampler, open(mount.path("big.ckpt"), "wb") as file:
        write_in_blocks(file, data)
        file.flush()
        status = mount.status()
        assert status["spilled_bytes"] > 64 * MIB  # most of the open file is only in the lake
        assert status["dirty_files"] == 1
        # What the status command reports, read as JSON (the table wraps with the terminal's width),
        # run in this process: a child's exec would close the open file, and a close seals.
        code, output, _ = cli_in_process("status", "--json", mount.mountpoint)
        shown = json.loads(output)
        assert code == 0
        assert shown["spilled_bytes"] > 64 * MIB and shown["staged_bytes"] <= 64 * MIB
        # Still open for writing: its spilled prefix reads back through the mount.
        with open(mount.path("big.ckpt"), "rb") as reader:
            assert reader.read(8 * MIB) == data[:8 * MIB]
            reader.seek(70 * MIB)
            assert reader.read(3 * MIB) == data[70 * MIB:73 * MIB]
    assert sampler.peak <= 64 * MIB, f"cache disk peaked at {sampler.peak / MIB:.1f} MiB"
    mount.sync()
    assert mount.status()["committed_bytes"] == len(data)
    assert mount.status()["staged_bytes"] == 0  # committed spilled files are evicted at once
    assert mount.status()["spilled_bytes_total"] >= status["spilled_bytes"]  # what spilled, counted for good
    with open(mount.path("big.ckpt"), "rb") as file:
        assert file.read() == data
    assert fresh_read(mounter, store_url, extra, "fresh", "big.ckpt") == data
    mount.assert_clean_log()


@pytest.mark.parametrize("change", ["rewrite", "truncate", "truncate-to-zero"])
def test_a_change_below_the_spilled_prefix_brings_it_back_first(mounter, tmp_path, change):
    mount = mounter(extra=CACHE)
    data = bytearray(os.urandom(FILE_MIB * MIB))
    with open(mount.path("big.ckpt"), "wb") as file:
        write_in_blocks(file, bytes(data))
        file.flush()
        assert mount.status()["spilled_bytes"] > 64 * MIB
        if change == "rewrite":
            file.seek(5 * MIB + 123)
            file.write(b"changed")
            data[5 * MIB + 123:5 * MIB + 130] = b"changed"
        elif change == "truncate":
            file.truncate(30 * MIB + 7)
            del data[30 * MIB + 7:]
        else:
            file.truncate(0)
            file.seek(0)
            file.write(b"small")
            data = bytearray(b"small")
        file.flush()
        assert mount.status()["spilled_bytes"] == 0
    mount.sync()
    with open(mount.path("big.ckpt"), "rb") as file:
        assert file.read() == data
    assert fresh_read(mounter, None, [], "fresh", "big.ckpt") == data
    mount.assert_clean_log()


def test_a_spilled_file_survives_a_crash_after_fsync(mounter):
    mount = mounter(extra=CACHE)
    data = os.urandom(FILE_MIB * MIB)
    file = open(mount.path("big.ckpt"), "wb")
    write_in_blocks(file, data)
    file.flush()
    os.fsync(file.fileno())
    assert mount.status()["spilled_bytes"] > 64 * MIB
    mount.kill()  # SIGKILL with the file still open: its punched prefix is known only to the journal
    try:
        file.close()
    except OSError:
        pass
    again = mounter(extra=CACHE, name="mnt-again")
    again.sync()
    with open(again.path("big.ckpt"), "rb") as reader:
        assert reader.read() == data
    assert fresh_read(mounter, None, [], "fresh", "big.ckpt") == data
    again.assert_clean_log()


def test_a_file_unlinked_while_it_spills_leaves_nothing_behind(mounter):
    mount = mounter(extra=CACHE)
    with open(mount.path("gone.ckpt"), "wb") as file:
        write_in_blocks(file, os.urandom(FILE_MIB * MIB))
        file.flush()
        assert mount.status()["spilled_bytes"] > 64 * MIB
        os.unlink(mount.path("gone.ckpt"))
        write_in_blocks(file, os.urandom(16 * MIB))  # rounds may still be running on it
    with open(mount.path("kept.ckpt"), "wb") as file:
        file.write(b"kept")
    mount.sync()
    status = mount.status()
    assert status["spilled_bytes"] == 0 and status["staged_bytes"] == 4
    assert os.listdir(mount.path()) == ["kept.ckpt"]
    mount.unmount()
    assert len(os.listdir(os.path.join(mount.cache_dir, "staging"))) == 1  # kept.ckpt's
    mount.assert_clean_log()
