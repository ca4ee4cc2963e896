"""Several mounts on one lake through real FUSE mounts, each with its own cache dir, as on the nodes
of a training job: a running mount follows what the others publish."""

import os
import random
import time

import pytest

from tests.helpers import read, write
from tests.test_frameworks import run_dcp


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


def snapshot_of(mount) -> dict[str, bytes] | None:
    """relative path -> content, or b'<dir>', of what a mount shows (history not included); None if
    an entry went away while it was being read (the mount applied another change meanwhile)."""
    try:
        return _walk(mount)
    except FileNotFoundError:
        return None


def _walk(mount) -> dict[str, bytes]:
    found = {}
    for top, dirs, files in os.walk(mount.mountpoint):
        if top == mount.mountpoint and ".versions" in dirs:
            dirs.remove(".versions")
        for name in dirs:
            found[os.path.relpath(os.path.join(top, name), mount.mountpoint)] = b"<dir>"
        for name in files:
            found[os.path.relpath(os.path.join(top, name), mount.mountpoint)] = read(os.path.join(top, name))
    return found


def test_random_changes_on_three_mounts_reach_the_others_within_the_refresh_interval(mounter):
    """A model of what each mount may see: each change is made on a random mount and synced, then a
    random other mount must show it (it, and every change before it) within its --refresh interval
    plus the time one refresh takes; at the end, after `ckptfs refresh` everywhere, every mount shows
    exactly the model. Seeded: the same operations on every run."""
    rng = random.Random(10)
    mounts = [mounter(cache=f"c{index}", name=f"m{index}", extra=["--refresh", "0.5"]) for index in range(3)]
    model: dict[str, bytes] = {}
    waits = []
    for step in range(20):
        writer = rng.choice(mounts)
        files = sorted(path for path, content in model.items() if content != b"<dir>")
        op = rng.choice(["write", "write", "overwrite", "unlink", "rename", "mkdir"])
        if op in ("overwrite", "unlink", "rename") and not files:
            op = "write"
        if op == "write":
            directory = rng.choice(["", "run", "run/step-1"])
            parts = directory.split("/") if directory else []
            for depth in range(len(parts)):
                parent = "/".join(parts[:depth + 1])
                os.makedirs(writer.path(parent), exist_ok=True)
                model[parent] = b"<dir>"
            path = os.path.join(directory, f"f{step}.pt") if directory else f"f{step}.pt"
            model[path] = f"step {step} by {writer.mountpoint}".encode()
            write(writer.path(path), model[path])
        elif op == "overwrite":
            path = rng.choice(files)
            model[path] = f"step {step} again".encode() * rng.randint(1, 50)
            write(writer.path(path), model[path])
        elif op == "unlink":
            path = rng.choice(files)
            os.unlink(writer.path(path))
            del model[path]
        elif op == "rename":
            path = rng.choice(files)
            new = os.path.join(os.path.dirname(path), f"moved{step}.pt")
            os.rename(writer.path(path), writer.path(new))
            model[new] = model.pop(path)
        else:
            model[f"dir{step}"] = b"<dir>"
            os.mkdir(writer.path(f"dir{step}"))
        writer.sync()
        reader = rng.choice([mount for mount in mounts if mount is not writer])
        synced = time.monotonic()
        deadline = synced + 0.5 + 15  # the interval, plus one refresh on a loaded machine
        while snapshot_of(reader) != model and time.monotonic() < deadline:
            time.sleep(0.02)
        assert snapshot_of(reader) == model, (step, op)
        waits.append(time.monotonic() - synced)
    for mount in mounts:
        mount.cli("refresh", mount.mountpoint)
        assert snapshot_of(mount) == model
        mount.assert_clean_log()
    print(f"visible after sync: median {sorted(waits)[len(waits) // 2]:.2f} s, max {max(waits):.2f} s")
