"""Committed staging files are evicted under --cache-size; the files stay readable from the lake."""

import hashlib
import os
import time


def staged_bytes(cache_dir: str) -> int:
    directory = os.path.join(cache_dir, "staging")
    return sum(os.stat(os.path.join(directory, f)).st_blocks * 512 for f in os.listdir(directory))


def test_clean_staging_files_are_evicted_and_read_back_from_the_lake(mounter, tmp_path):
    # 128 MiB budget: a quarter for fetched chunks, 96 MiB for staging files.
    mount = mounter(extra=["--cache-size", "128M"])
    digests = {}
    for index in range(6):
        data = os.urandom(32 * 1024 * 1024)
        with open(mount.path(f"f{index}"), "wb") as file:
            file.write(data)
        digests[f"f{index}"] = hashlib.sha256(data).hexdigest()
    mount.sync()
    deadline = time.monotonic() + 30
    while staged_bytes(mount.cache_dir) > 96 * 1024 * 1024 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert staged_bytes(mount.cache_dir) <= 96 * 1024 * 1024
    for name, digest in digests.items():
        assert hashlib.sha256(open(mount.path(name), "rb").read()).hexdigest() == digest
    mount.assert_clean_log()
