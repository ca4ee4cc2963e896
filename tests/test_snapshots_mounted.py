"""Namespace snapshots through real mounts, on both kinds of lake: a mount starting after a snapshot
reads it and only the segments after it, and shows what a mount that read the whole log shows;
mounts write snapshots on their own as the log grows; fsck checks them."""

import json
import os

from ckptfs.lake import Lake
from ckptfs.store import open_store
from tests.helpers import read, write


def listing(mount) -> dict[str, bytes]:
    """relative path -> content (or b'<dir>'), history included."""
    found = {}
    for top, dirs, files in os.walk(mount.mountpoint):
        for name in dirs:
            found[os.path.relpath(os.path.join(top, name), mount.mountpoint)] = b"<dir>"
        for name in files:
            path = os.path.join(top, name)
            found[os.path.relpath(path, mount.mountpoint)] = read(path)
    return found


def lake_of(url: str, extra: list[str]) -> Lake:
    endpoint = extra[extra.index("--endpoint-url") + 1] if "--endpoint-url" in extra else None
    lake = Lake(open_store(url, endpoint_url=endpoint))
    lake.open(create=False)
    return lake


def test_a_mount_started_after_a_snapshot_reads_it_and_the_segments_after_it(mounter, lake_url):
    url, extra = lake_url
    writer = mounter(url, extra, cache="cw", name="w")
    for step in range(6):
        os.makedirs(writer.path(f"step-{step}"))
        write(writer.path(f"step-{step}", "model.pt"), f"weights {step}".encode() * 100)
        write(writer.path("last.pt"), f"last {step}".encode())
        writer.sync()
    os.rename(writer.path("step-0"), writer.path("best"))
    os.symlink("step-5/model.pt", writer.path("latest"))
    writer.sync()
    done = json.loads(writer.cli("snapshot", "--json", writer.mountpoint).stdout)
    assert done["written"].startswith("snapshots/") and done["segments"] >= 7  # one sync each, at least
    # The tree a starting mount gets: best and step-1..5 with a model.pt each, last.pt and latest
    # (the folded base alone is empty in a young lake: "0 entries" misled).
    assert done["entries"] == 14
    write(writer.path("after.pt"), b"after the snapshot")
    os.unlink(writer.path("step-1", "model.pt"))
    writer.sync()
    segments_after = 2  # at most: the write and the unlink, if published apart

    fresh = mounter(url, extra, cache="cf", name="f")
    status = fresh.status()
    assert status["start_snapshot"] == done["written"]
    assert 1 <= status["start_segments_read"] <= segments_after
    whole = mounter(url, extra, cache="cl", name="l")  # the same, from the whole log
    lake = lake_of(url, extra)
    assert lake.read_namespace().differences(lake.read_namespace(use_snapshot=False)) == []
    assert listing(fresh) == listing(whole) == listing(writer)
    assert read(fresh.path(".versions", "last.pt", sorted(os.listdir(fresh.path(".versions", "last.pt")))[0])) \
        == b"last 0"
    # A remount on an existing cache dir starts from the snapshot too, and catches up.
    fresh.unmount()
    write(writer.path("while-away.pt"), b"meanwhile")
    writer.sync()
    again = mounter(url, extra, cache="cf", name="f")
    assert again.status()["start_snapshot"] == done["written"]
    assert read(again.path("while-away.pt")) == b"meanwhile" and listing(again) == listing(writer)
    report = json.loads(writer.cli("fsck", url, *extra, "--json").stdout)["lake"]
    assert report["snapshots"] == 1 and report["problems"] == []
    for mount in (writer, again, whole):
        mount.assert_clean_log()


def test_mounts_write_snapshots_as_the_log_grows_and_fsck_checks_them(mounter, tmp_path):
    url = f"file://{tmp_path}/lake"
    a = mounter(url, ["--snapshot-every", "4"], cache="ca", name="a")
    b = mounter(url, ["--snapshot-every", "4"], cache="cb", name="b")
    for step in range(10):
        write((a if step % 2 else b).path(f"f{step}"), bytes([step]) * 10)
        (a if step % 2 else b).sync()
    a.cli("refresh", a.mountpoint)  # a sweep: a snapshot is due (10 segments, threshold 4 to 8)
    status = a.status()
    assert status["snapshots_written"] == 1
    lake = Lake(open_store(url))
    lake.open(create=False)
    (horizon, writer, segments, key), = lake.snapshots()
    assert writer == status["mount_id"] and segments >= 10 and key == status["last_snapshot"]
    assert lake.read_namespace().differences(lake.read_namespace(use_snapshot=False)) == []
    # A snapshot that another client damaged is reported by fsck and skipped by a starting mount.
    with open(os.path.join(tmp_path, "lake", key), "r+b") as file:
        file.seek(40)
        file.write(b"\xff" * 8)
    result = a.cli("fsck", url, "--json", check=False)
    problems = json.loads(result.stdout)["lake"]["problems"]
    assert result.returncode == 1 and [(p["kind"], p["key"]) for p in problems] == [("snapshot", key)]
    c = mounter(url, cache="cc", name="c")
    assert c.status()["start_snapshot"] is None and sorted(os.listdir(c.mountpoint)) == sorted(
        f"f{step}" for step in range(10))
    assert key in c.log() and "skipping namespace snapshot" in c.log()
    for mount in (a, b):
        mount.assert_clean_log()


def test_files_closed_one_by_one_share_segments(mounter, tmp_path):
    """Each close queues an event; the publisher lets them gather for up to half a second unless a
    sync waits, so 300 files closed one by one make a few segments, not 300."""
    mount = mounter(cache="c", name="m")
    for index in range(300):
        write(mount.path(f"shard-{index:03d}.pt"), b"x" * 100)
    mount.sync()
    status = mount.status()
    assert status["events_published"] >= 300
    assert status["segments_published"] <= 30, status["segments_published"]
    segments = os.listdir(os.path.join(tmp_path, "lake", "log", status["mount_id"]))
    assert len(segments) == status["segments_published"]
    mount.assert_clean_log()
