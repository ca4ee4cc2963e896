"""Randomized crash trials in CI (scripts/crash_trials.py runs thousands): SIGKILL of every process
on the node, and power cuts of the cache disk (tests/powercut.py), with writers shaped like training."""

import os
import subprocess

from tests.crashtrial import PowerCutLayer, Shape, run_trials
from tests.helpers import Mount


def _report(result) -> str:
    return (f"{result.trials} trials, {result.durable_records} durable records, {result.recorded_files} files "
            f"checked, {result.undone_writes} writes undone by power cuts, {len(result.lost_files)} lost, "
            f"{len(result.torn_versions)} torn, {len(result.start_failures)} failed starts, "
            f"{len(result.lake_problems)} lake problems")


def _assert_clean(result, *, files: int) -> None:
    print(_report(result))
    assert result.recorded_files > files, "the writers recorded too few files for the trials to mean much"
    assert result.start_failures == []
    assert result.lost_files == []
    assert result.torn_versions == []
    assert result.lake_problems == []


def test_randomized_sigkill_trials_lose_nothing(tmp_path):
    result = run_trials(str(tmp_path), trials=12, seed=2026)  # crash states at the layer: test_reference_model.py
    _assert_clean(result, files=20)


def test_randomized_sigkill_trials_on_s3(tmp_path, s3_url):
    url, endpoint = s3_url
    result = run_trials(str(tmp_path), trials=6, seed=7, store_url=url, extra=["--endpoint-url", endpoint])
    _assert_clean(result, files=5)


def test_randomized_power_cuts_lose_nothing_fsynced_and_show_no_torn_version(tmp_path):
    """The cache disk forgets every write no fsync made durable, with three writers and a writable
    memmap on the mount: each restart repairs by itself and shows what was fsynced, whole."""
    result = run_trials(str(tmp_path), trials=16, seed=11, shape=Shape(writers=3, memmap=True, power_cut=True))
    _assert_clean(result, files=60)
    assert result.undone_writes > 100, "the cuts took back too little to test anything"


def test_crash_trials_shaped_like_training_with_two_mounts_and_gc(tmp_path):
    """Two mounts of one lake, two writers and a memmap on each, `ckptfs gc` running throughout:
    every process of the node killed at once, at random moments (upload, publish, snapshot, sweep)."""
    result = run_trials(str(tmp_path), trials=6, seed=5, shape=Shape(writers=2, mounts=2, memmap=True, gc=True))
    _assert_clean(result, files=40)
    assert os.listdir(tmp_path / "lake" / "gc" / "collected"), "GC never finished a sweep during the trials"


def test_an_fsync_after_close_makes_a_sealed_version_durable(tmp_path):
    """Some savers close, then open the file read-only and fsync it: that fsync must reach the bytes
    of the version the close sealed (a power cut right after it keeps them)."""
    layer = PowerCutLayer(str(tmp_path / "disk"), str(tmp_path / "disk-mnt"))
    mount = None
    try:
        # The lake is made unwritable so the version stays sealed and staged, not yet in the lake.
        os.makedirs(tmp_path / "lake")
        mount = Mount(f"file://{tmp_path}/lake", str(tmp_path / "mnt"), str(tmp_path / "disk-mnt" / "cache"),
                      str(tmp_path / "daemon.log")).start()
        (tmp_path / "lake" / "packs").write_bytes(b"")  # pack keys need a directory: uploads fail
        data = os.urandom(4 << 20)
        with open(mount.path("model.pt"), "wb") as file:
            file.write(data)
        fd = os.open(mount.path("model.pt"), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        assert os.getxattr(mount.path("model.pt"), "user.ckptfs.state").startswith(b"uploading")
        os.kill(mount.process.pid, 19)  # SIGSTOP: the node stops ...
        layer.cut()  # ... and its cache disk forgets what was not made durable
        mount.kill()
        layer.revive()
        (tmp_path / "lake" / "packs").unlink()
        mount = Mount(f"file://{tmp_path}/lake", str(tmp_path / "mnt"), str(tmp_path / "disk-mnt" / "cache"),
                      str(tmp_path / "daemon.log")).start()
        assert open(mount.path("model.pt"), "rb").read() == data
        mount.sync()
        mount.unmount()
        mount = None
    finally:
        if mount is not None:
            mount.kill()
        layer.stop()
        subprocess.run(["fusermount3", "-u", "-z", str(tmp_path / "disk-mnt")], capture_output=True)
