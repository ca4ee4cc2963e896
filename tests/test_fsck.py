"""ckptfs fsck on a lake and on a cache dir; malformed lake objects and a damaged cache dir at start."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from ckptfs.lake import Lake, codec, packs
from ckptfs.lake.check import check_lake
from ckptfs.lake.manifest import Manifest
from ckptfs.store.memory import MemoryStore


def ckptfs(*args):
    return subprocess.run([sys.executable, "-m", "ckptfs", *args], capture_output=True, text=True, timeout=300)


def objects(lake, prefix):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(os.path.join(lake, prefix)) for f in files)


@pytest.fixture
def populated(mounter, tmp_path):
    """A lake with a few committed files; returns the lake directory."""
    mount = mounter(cache="cache0")
    os.makedirs(mount.path("run"))
    for index in range(3):
        with open(mount.path("run", f"f{index}"), "wb") as file:
            file.write(os.urandom(2_000_000))
        mount.sync()  # a segment per file: damaging the second loses one file and no directory
    mount.unmount()
    mount.assert_clean_log()
    shutil.rmtree(tmp_path / "cache0")
    return str(tmp_path / "lake")


def test_fsck_of_a_healthy_lake(populated):
    result = ckptfs("fsck", f"file://{populated}", "--verify-data", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)["lake"]
    assert report["live_files"] == 3 and report["versions"] == 3 and report["problems"] == []


def test_fsck_finds_missing_and_corrupt_packs(populated):
    packs = objects(populated, "packs")
    assert len(packs) == 3  # one per file: each file's chunks go into its own packs
    os.unlink(packs[0])
    with open(packs[1], "r+b") as file:
        file.seek(200)
        file.write(b"\xff\xff")
    quick = json.loads(ckptfs("fsck", f"file://{populated}", "--json").stdout)["lake"]["problems"]
    assert [p["kind"] for p in quick] == ["pack-missing"]
    result = ckptfs("fsck", f"file://{populated}", "--verify-data", "--json")
    assert result.returncode == 1
    found = [(p["kind"], p["key"]) for p in json.loads(result.stdout)["lake"]["problems"]]
    assert found == [("pack-missing", os.path.relpath(packs[0], populated)),
                     ("chunk-corrupt", os.path.relpath(packs[1], populated))]


@pytest.mark.parametrize("garbage, kind", [
    (b"", "segment"), (b"{not json", "segment"), (b'{"format": 99, "events": []}', "segment"),
    (b'{"format": 1, "events": [{"op": "put", "time_ns": "x"}]}', "event")])
def test_malformed_segment_is_reported_and_skipped(populated, mounter, garbage, kind):
    segment = objects(populated, "log")[1]
    with open(segment, "wb") as file:
        file.write(garbage)
    result = ckptfs("fsck", f"file://{populated}", "--json")
    problems = json.loads(result.stdout)["lake"]["problems"]
    assert result.returncode == 1 and [(p["kind"], p["key"]) for p in problems] == [
        (kind, os.path.relpath(segment, populated))]
    mount = mounter(cache="cache1")  # the mount still comes up and serves everything else
    assert len(os.listdir(mount.path("run"))) == 2
    assert os.path.relpath(segment, populated) in mount.log()
    mount.assert_clean_log(allowed=("skipping damaged namespace segment", "skipping an invalid event of"))


def test_missing_or_malformed_manifest_gives_eio(populated, mounter):
    manifests = objects(populated, "manifests")
    os.unlink(manifests[0])
    with open(manifests[1], "wb") as file:
        file.write(b"CKPM" + b"\0" * 40)
    problems = json.loads(ckptfs("fsck", f"file://{populated}", "--json").stdout)["lake"]["problems"]
    assert {p["key"] for p in problems if p["kind"] == "manifest"} >= {os.path.relpath(m, populated)
                                                                      for m in manifests[:2]}
    mount = mounter(cache="cache1")
    failures = 0
    for name in os.listdir(mount.path("run")):
        try:
            with open(mount.path("run", name), "rb") as file:
                file.read()
        except OSError as error:
            assert error.errno == 5
            failures += 1
    assert failures == 2
    mount.assert_clean_log(allowed=("manifest",))


def test_damaged_journal_stops_the_mount_until_repaired(mounter, tmp_path):
    mount = mounter(cache="cache")
    with open(mount.path("kept"), "wb") as file:
        file.write(b"committed before the damage")
    mount.unmount()
    with open(tmp_path / "cache" / "journal.sqlite", "r+b") as file:
        file.seek(0)
        file.write(b"this is not a database" * 10)
    with pytest.raises(RuntimeError, match="fsck --cache-dir .* --repair"):
        mounter(cache="cache")
    assert ckptfs("fsck", "--cache-dir", str(tmp_path / "cache")).returncode == 1
    repaired = ckptfs("fsck", "--cache-dir", str(tmp_path / "cache"), "--repair", "--json")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    report = json.loads(repaired.stdout)["cache"]
    assert any("moved the damaged journal aside" in action for action in report["repairs"])
    assert report["remaining"] == []
    again = mounter(cache="cache")
    assert open(again.path("kept"), "rb").read() == b"committed before the damage"


def _a_version_waiting_for_upload_loses_its_staged_bytes(mounter, tmp_path, *, fsync: bool):
    """`f` holds a committed version, then a 64 MiB one (fsync'ed or not) that cannot upload; the
    daemon stops without draining and the staging file of the new version is cut to 1000 bytes."""
    mount = mounter(cache="cache")
    with open(mount.path("f"), "wb") as file:
        file.write(b"old and committed")
    mount.sync()
    # Block uploads for certain: pack keys need directories under packs/, and a file is in the way.
    packs = tmp_path / "lake" / "packs"
    assert not packs.exists()  # the old version is small enough to live inline in its manifest
    packs.write_bytes(b"")
    with open(mount.path("f"), "wb") as file:
        file.write(os.urandom(64 * 1024 * 1024))
        if fsync:
            file.flush()
            os.fsync(file.fileno())
    assert os.getxattr(mount.path("f"), "user.ckptfs.state").startswith(b"uploading")
    mount.cli("unmount", "--no-drain", mount.mountpoint)
    mount.process.wait(timeout=60)
    staging = tmp_path / "cache" / "staging"
    for name in os.listdir(staging):
        if os.path.getsize(staging / name) == 64 * 1024 * 1024:
            os.truncate(staging / name, 1000)
    return packs


def test_a_version_lost_before_any_fsync_gives_way_to_the_previous_one_at_start(mounter, tmp_path):
    """What a power cut does to a version closed without fsync (tests/powercut.py makes it happen
    for real in test_crash.py): the mount starts by itself, the file shows its previous version,
    and the log names the file."""
    packs = _a_version_waiting_for_upload_loses_its_staged_bytes(mounter, tmp_path, fsync=False)
    packs.unlink()
    again = mounter(cache="cache")
    assert open(again.path("f"), "rb").read() == b"old and committed"
    assert re.search(r"WARNING .*after a crash: b'f': dropped version \w+ \(its staged bytes were lost.*"
                     r"the file shows its previous version", again.log())
    again.sync()
    assert [len(open(again.path(".versions", "f", name), "rb").read())
            for name in os.listdir(again.path(".versions", "f"))] == [17]


def test_lost_staging_file_stops_the_mount_until_repaired(mounter, tmp_path):
    """A version a caller fsync'ed whose bytes are gone: the disk broke its word, a person decides."""
    packs = _a_version_waiting_for_upload_loses_its_staged_bytes(mounter, tmp_path, fsync=True)
    with pytest.raises(RuntimeError, match="missing or truncated"):
        mounter(cache="cache")
    repaired = ckptfs("fsck", "--cache-dir", str(tmp_path / "cache"), "--repair", "--json")
    report = json.loads(repaired.stdout)["cache"]
    assert repaired.returncode == 0 and any("dropped version" in action for action in report["repairs"])
    packs.unlink()
    again = mounter(cache="cache")
    assert open(again.path("f"), "rb").read() == b"old and committed"
    again.sync()


def test_fsck_checks_every_pack_a_chunk_is_named_in():
    """Small chunks are packed again at every save, so one chunk id can be named at several places:
    each place is checked, whichever manifest fsck reads first."""
    store = MemoryStore()
    lake = Lake(store)
    lake.open()
    data = b"a record header, the same in every save"
    identifier, blob = codec.encode(data)
    placed = {}
    for name in ("one", "two"):
        pack = packs.new_pack_id()
        encoded, (where,) = packs.encode(pack, [(identifier, blob)])
        lake.put_pack(pack, encoded)
        manifest = lake.put_manifest(Manifest(name.encode(), len(data), 0o644, 1, "0" * 16, 1,
                                              [(identifier, len(data))], locations=[where]))
        placed[manifest] = pack
    lake.register_mount("0" * 16)
    lake.append_log("0" * 16, 0, [{"op": "put", "path": f"f{number}", "time_ns": 1 + number, "manifest": manifest,
                                   "size": len(data), "mode": 0o644, "mtime_ns": 1}
                                  for number, manifest in enumerate(placed)], 10)
    assert check_lake(lake, verify_data=True).ok
    second = sorted(placed)[1]  # read after the other: its place of the chunk was once left unchecked
    store.delete(packs.pack_key(placed[second]))
    report = check_lake(lake)
    assert [(problem.kind, problem.key) for problem in report.problems] == [
        ("pack-missing", packs.pack_key(placed[second]))]
    assert report.chunks == 1 and report.packs == 2
