"""Storage-class tiers: GC moves packs that only old versions use to a colder class; a read of
archived data fails at once with an error naming what to do; a save never dedups against an
archived pack. At the layer on a MemoryStore that models S3's classes, and once on moto_server."""

from __future__ import annotations

import json
import os

import boto3
import pytest
import trio

from ckptfs.errors import CkptfsError
from ckptfs.lake import Lake
from ckptfs.lake.check import check_lake
from ckptfs.lake.gc import GarbageCollector, read_marks
from ckptfs.lake.retention import Policy, PolicyError
from ckptfs.store import ObjectArchived, RetryingStore, open_store
from ckptfs.store.memory import MemoryStore
from tests.layers import ROOT, load, mount_on, running
from tests.test_gc import GRACE, MIB, WallClock, _packs_of, _save_version, assert_whole


def _lake(store) -> Lake:
    store.put("lake.json", json.dumps({"format": "ckptfs-lake", "version": 4, "created_ns": 0,
                                       "gc_grace_s": GRACE, "max_clock_skew_s": 0, "fold_s": 0}).encode())
    lake = Lake(RetryingStore(store, first_delay=0.001, max_delay=0.01, give_up_after=5))
    lake.open()
    return lake


def test_old_versions_move_to_a_colder_class_and_reads_of_them_fail_at_once(tmp_path):
    clock = WallClock()
    store = MemoryStore(clock=clock)
    lake = _lake(store)
    saved: dict[str, bytes] = {}
    old_data = os.urandom(2 * MIB)

    async def main():
        mount = mount_on(tmp_path, "a" * 16, lake, clock=clock)
        async with running(mount):
            old = await _save_version(mount, b"model.pt", old_data, saved)
            await _save_version(mount, b"model.pt", os.urandom(2 * MIB), saved)
            lake.set_retention(b"", Policy(keep_last=2, archive_after_s=3600, archive_class="GLACIER"))
            clock.advance(GRACE + 1)
            assert GarbageCollector(lake, now=clock).run().archived == 0  # an hour has not passed
            clock.advance(3600)
            announced = GarbageCollector(lake, now=clock).run()
            assert announced.archived == 0 and read_marks(store)[1].archiving  # writers see it first
            clock.advance(GRACE + 1)
            report = GarbageCollector(lake, now=clock).run()
            assert report.archived == 1
            pack, = _packs_of(lake, old)
            assert store.storage_class(pack) == "GLACIER"
            assert read_marks(store)[1].archived == {pack: "GLACIER"}
            with pytest.raises(ObjectArchived, match="restore"):
                lake.get_chunk(*next((chunk, lake.get_manifest(old).location(0))
                                     for chunk, _ in lake.get_manifest(old).chunks[:1]))
            # A save of the same bytes does not name the archived pack: it would not read back.
            again = await _save_version(mount, b"copy.pt", old_data, saved)
            assert pack not in _packs_of(lake, again)
        fresh = mount_on(tmp_path, "b" * 16, lake, clock=clock)  # reads from the lake, not a staging file
        async with running(fresh):
            files = fresh.files
            history = files.tree.lookup(files.tree.lookup(ROOT, b".versions").ino, b"model.pt").ino
            first_version = sorted(files.tree.listing(history))[0][1]
            with trio.fail_after(10), pytest.raises(CkptfsError, match="model.pt .* archive storage class"):
                await load(files, first_version)
        del saved[old]  # archived: not readable without a restore, which the check below skips
        assert_whole(lake, clock, saved, archived=True)
        assert check_lake(lake, verify_data=True).archived > 0

    trio.run(main)


def test_a_policy_names_a_known_storage_class():
    with pytest.raises(PolicyError, match="storage class"):
        Policy(keep_last=1, archive_after_s=60, archive_class="COLD")
    with pytest.raises(PolicyError, match="together"):
        Policy(keep_last=1, archive_after_s=60)


def test_s3_transitions_a_pack_and_answers_invalid_object_state(s3_url, tmp_path):
    """moto_server: CopyObject onto itself with a storage class, and a GET of a GLACIER object."""
    url, endpoint = s3_url
    store = open_store(url, endpoint_url=endpoint)
    store.put("packs/abc/x", b"data")
    store.set_storage_class("packs/abc/x", "GLACIER")
    client = boto3.client("s3", endpoint_url=endpoint)
    bucket, prefix = url[len("s3://"):].split("/", 1)
    assert client.head_object(Bucket=bucket, Key=f"{prefix}/packs/abc/x")["StorageClass"] == "GLACIER"
    assert [info.storage_class for info in store.list_stat("packs/")] == ["GLACIER"]
    with pytest.raises(ObjectArchived, match="restore-object"):
        store.get("packs/abc/x")
    with pytest.raises(CkptfsError, match="storage classes"):
        open_store(f"file://{tmp_path}").set_storage_class("x", "GLACIER")
