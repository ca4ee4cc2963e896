"""Committed staging files are evicted under --cache-size; the files stay readable from the lake."""

import hashlib
import os
import time


def staged_bytes(cache_dir: str) -> int:
    directory = os.path.join(cache_dir, "staging")
    return sum(os.stat(os.path.join(directory, f)).st_blocks * 512 for f in os.listdir(directory))


def test_clean_staging_files_are_evicted_and_read_back_from_the_lake(mounter, tmp_path):
    # 128 MiB budget: a quarter for fetched chunks, 8 MiB for the journal, 88 MiB for staging files.
    mount = mounter(extra=["--cache-size", "128M"])
    digests = {}
    for index in range(6):
        data = os.urandom(32 * 1024 * 1024)
        with open(mount.path(f"f{index}"), "wb") as file:
            file.write(data)
        digests[f"f{index}"] = hashlib.sha256(data).hexdigest()
    mount.sync()
    deadline = time.monotonic() + 30
    while staged_bytes(mount.cache_dir) > 88 * 1024 * 1024 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert staged_bytes(mount.cache_dir) <= 88 * 1024 * 1024
    for name, digest in digests.items():
        assert hashlib.sha256(open(mount.path(name), "rb").read()).hexdigest() == digest
    mount.assert_clean_log()


def test_overwriting_a_file_does_not_copy_or_fetch_the_content_it_replaces(mounter):
    # `open(path, "wb")` (O_TRUNC), as torch.save and Lightning's last.ckpt do: the new version starts
    # empty. Copying the old one first cost 2.6 s per GiB before the truncate threw it away.
    mount = mounter(extra=["--cache-size", "128M"])
    first, second = os.urandom(32 * 1024 * 1024), os.urandom(32 * 1024 * 1024)
    with open(mount.path("staged.ckpt"), "wb") as file:
        file.write(first)
    mount.sync()
    before = mount.status()["staged_bytes"]
    with open(mount.path("staged.ckpt"), "wb") as file:
        file.write(b"new")
    # A copy would have put a second 32 MiB staging file on the cache disk.
    assert mount.status()["peak_staged_bytes"] < before + 1024 * 1024
    assert open(mount.path("staged.ckpt"), "rb").read() == b"new"

    # Evicted: the old content is only in the lake, and an overwrite must not download it.
    with open(mount.path("remote.ckpt"), "wb") as file:
        file.write(first)
    mount.sync()
    for index in range(4):  # 128 MiB more through an 88 MiB staging share: remote.ckpt goes first
        with open(mount.path(f"filler{index}"), "wb") as file:
            file.write(second)
    mount.sync()
    deadline = time.monotonic() + 30
    while staged_bytes(mount.cache_dir) > 88 * 1024 * 1024 and time.monotonic() < deadline:
        time.sleep(0.2)
    chunks = os.path.join(mount.cache_dir, "chunks")
    with open(mount.path("remote.ckpt"), "wb") as file:
        file.write(b"replaced")
    mount.sync()
    assert os.listdir(chunks) == []
    assert open(mount.path("remote.ckpt"), "rb").read() == b"replaced"
    oldest = sorted(os.listdir(mount.path(".versions", "remote.ckpt")))[0]
    with open(mount.path(".versions", "remote.ckpt", oldest), "rb") as file:
        assert hashlib.sha256(file.read()).digest() == hashlib.sha256(first).digest()
    assert os.listdir(chunks), "the replaced version was still local: the check above proved nothing"
    mount.assert_clean_log()
