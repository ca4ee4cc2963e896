"""Several mounts on one lake through real FUSE mounts, each with its own cache dir, as on the nodes
of a training job: a running mount follows what the others publish."""

import os
import time

import pytest

from tests.test_frameworks import run_dcp


def read(path) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def write(path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)


def test_a_running_mount_sees_what_another_publishes(mounter):
    a = mounter(cache="ca", name="a", extra=["--refresh", "0.3"])
    b = mounter(cache="cb", name="b", extra=["--refresh", "0.3"])
    os.makedirs(a.path("run", "step-1"))
    write(a.path("run", "step-1", "model.pt"), b"v1" * 1000)
    a.sync()
    deadline = time.monotonic() + 15
    while not os.path.exists(b.path("run", "step-1", "model.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read(b.path("run", "step-1", "model.pt")) == b"v1" * 1000  # within the refresh interval
    # The kernel's caches are invalidated: a reader that has the old pages sees the new content.
    write(a.path("run", "step-1", "model.pt"), b"v2" * 1500)
    a.sync()
    b.cli("refresh", b.mountpoint)
    assert os.stat(b.path("run", "step-1", "model.pt")).st_size == 3000
    assert read(b.path("run", "step-1", "model.pt")) == b"v2" * 1500
    assert len(os.listdir(b.path(".versions", "run", "step-1", "model.pt"))) == 2
    os.rename(b.path("run", "step-1"), b.path("run", "best"))
    b.sync()
    a.cli("refresh", a.mountpoint)
    assert os.listdir(a.path("run")) == ["best"]
    assert b.status()["refreshes"] >= 1 and b.status()["refresh_error"] is None
    for mount in (a, b):
        mount.assert_clean_log()


def test_a_remount_on_its_cache_dir_catches_up_before_it_is_ready(mounter):
    a = mounter(cache="ca", name="a")
    b = mounter(cache="cb", name="b")
    write(a.path("first"), b"1")
    a.sync()
    b.cli("refresh", b.mountpoint)
    assert os.listdir(b.mountpoint) == ["first"]
    b.unmount()
    write(a.path("while-away"), b"2")
    a.sync()
    again = mounter(cache="cb", name="b")
    assert sorted(os.listdir(again.mountpoint)) == ["first", "while-away"]
    assert read(again.path("while-away")) == b"2"
    again.assert_clean_log()


def test_dcp_ranks_on_their_own_mounts_and_a_reader_that_follows(mounter, tmp_path):
    pytest.importorskip("torch")
    reader = mounter(cache="reader-cache", name="reader", extra=["--refresh", "0"])  # running before the save
    writers = [mounter(cache=f"cache{rank}", name=f"rank{rank}") for rank in range(4)]
    run_dcp(tmp_path, [writer.path("run", "step-100") for writer in writers], "save", world=4)
    for writer in writers:
        writer.sync()
    reader.cli("refresh", reader.mountpoint)
    names = sorted(os.listdir(reader.path("run", "step-100")))
    assert ".metadata" in names and len(names) == 5, names  # rank 0's metadata and one file per rank
    run_dcp(tmp_path, reader.path("run", "step-100"), "load", world=4)
    reader.assert_clean_log()
