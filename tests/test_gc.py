"""Garbage collection and the writer's leases, at the layer (no kernel): mounts assembled as the
daemon does on one MemoryStore, a wall clock the test moves (the store's last-modified times, the
leases and GC read it), and after every run `fsck --verify-data` and every kept version read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import trio

from ckptfs.errors import CkptfsError
from ckptfs.lake import Lake, gclock, keeps, retention
from ckptfs.lake import gc as gc_module
from ckptfs.lake.check import check_lake
from ckptfs.lake.gc import GarbageCollector, read_collected, read_marks
from ckptfs.lake.gclock import GcBusy
from ckptfs.lake.retention import Policy, Retention
from ckptfs.store import PermanentStoreError, RetryingStore, open_store
from ckptfs.store.faults import FaultyStore
from ckptfs.store.memory import MemoryStore
from tests.layers import ROOT, load, mount_on, published, running, save

MIB = 1 << 20
GRACE = 8  # seconds: the lake's gc_grace_s (lease 2 s)


class WallClock:
    """time.time_ns() moved forward by what the test advanced."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return time.time_ns() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += int(seconds * 1e9)


class RealClock(WallClock):
    """The wall clock, moved by sleeping: for a store whose last-modified times are its own (S3)."""

    def advance(self, seconds: float) -> None:
        time.sleep(seconds)


def new_lake(clock: WallClock, *, faulty: bool = False, store=None,
             grace: int = GRACE) -> tuple[Lake, MemoryStore, FaultyStore | None]:
    store = store if store is not None else MemoryStore(clock=clock)
    store.put("lake.json", json.dumps({
        "format": "ckptfs-lake", "version": 4, "created_ns": 0,
        "chunking": {"profile": 3, "min": 262144, "avg": 1048576, "max": 4194304},
        # saves here are milliseconds apart: fold nothing (folding has tests of its own)
        "gc_grace_s": grace, "max_clock_skew_s": 0, "late_publish_s": 0, "fold_s": 0}).encode())
    faults = FaultyStore(store) if faulty else None
    lake = Lake(RetryingStore(faults or store, first_delay=0.001, max_delay=0.01, give_up_after=5))
    lake.open()
    return lake, store, faults


def collect(lake: Lake, clock: WallClock, **options):
    return GarbageCollector(lake, now=clock, threads=4).run(**options)


def read_version(lake: Lake, manifest_id: str) -> bytes:
    value = lake.get_manifest(manifest_id)
    if value.inline is not None:
        return value.inline
    return b"".join(lake.get_chunk(chunk, value.location(index)) for index, (chunk, _) in enumerate(value.chunks))


def assert_whole(lake: Lake, clock: WallClock, saved: dict[str, bytes], *, archived: bool = False) -> None:
    """fsck --verify-data finds nothing, and every version retention keeps now and GC has not
    collected reads back as saved (`saved`: manifest id -> bytes, for every version the test wrote)."""
    report = check_lake(lake, verify_data=True)
    assert report.ok, report.problems
    tree = lake.read_namespace()
    judge = Retention(lake.retention_policies(), clock(), fold_ns=lake.fold_ns)
    collected = read_collected(lake.store)  # a policy widened after a sweep cannot bring those back
    kept = [verdict.state.manifest for _, verdict in judge.judge_all(tree.history)
            if verdict.kept and verdict.state.manifest not in collected]
    assert kept
    for identifier in kept:
        if archived and identifier not in saved:
            continue  # in an archive class: the test checked it fails at once
        assert read_version(lake, identifier) == saved[identifier]


def manifests_of(lake: Lake, path: bytes) -> list[str]:
    return [state.manifest for state in lake.read_namespace().history[path] if state.manifest]


def test_retention_rules():
    """The rules of lake/retention.py on one history: live, last N (live paths only), within,
    daily (the scope as it stood at the end of each kept day), tags and holds, and no policy."""
    from ckptfs.lake.namespace import State
    day, hour = retention.DAY_NS, retention.HOUR_NS
    now = 10 * day
    history = {
        b"run/last.ckpt": [State(t, f"{t:032x}") for t in (1 * day, 2 * day, 9 * day, 9 * day + hour)],
        # rotated away on day 3: live at the end of day 2 only
        b"run/ckpt-2/model": [State(2 * day + hour, "a" * 32), State(3 * day + hour, None)],
        # written and rotated away within day 4: never live at the end of a day
        b"run/ckpt-4/model": [State(4 * day + hour, "b" * 32), State(4 * day + 2 * hour, None)],
        b"other/x": [State(1 * day, "c" * 32), State(2 * day, "d" * 32)],
    }
    policies = {b"run": Policy(keep_last=2, keep_daily=3)}
    judge = Retention(policies, now, tagged={f"{day:032x}": ["best"]}, held={"b" * 32})
    reasons = {(path, verdict.state.manifest): verdict.reasons for path, verdict in judge.judge_all(history)}
    assert reasons[(b"run/last.ckpt", f"{9 * day + hour:032x}")] == ("live",)
    assert reasons[(b"run/last.ckpt", f"{9 * day:032x}")] == ("last 2",)
    # The 3 newest days with changes are 9, 4 and 3; the version of day 2 was content at their ends.
    assert reasons[(b"run/last.ckpt", f"{2 * day:032x}")] == ("daily 3",)
    assert reasons[(b"run/last.ckpt", f"{day:032x}")] == ("tag best",)
    # Rotated away by day 3's last change: not content at the end of any kept day.
    assert reasons[(b"run/ckpt-2/model", "a" * 32)] == ()
    assert reasons[(b"run/ckpt-4/model", "b" * 32)] == ("held",)
    assert reasons[(b"other/x", "c" * 32)] == ("no policy",)
    within = Retention({b"": Policy(keep_within_s=2 * 86400)}, now)
    kept = {verdict.state.manifest for _, verdict in within.judge_all(history) if verdict.kept}
    assert f"{9 * day:032x}" in kept and "d" * 32 in kept and "c" * 32 not in kept and "a" * 32 not in kept


def test_folding_hides_the_temp_file_of_an_atomic_save_and_an_append_loop():
    from ckptfs.lake.namespace import State
    s = 10**9
    history = {
        b"model.pt.tmp": [State(100 * s, "1" * 32), State(101 * s, None)],  # renamed away after 1 s
        b"model.pt": [State(101 * s, "1" * 32)],
        b"log.txt": [State(200 * s, "2" * 32), State(203 * s, "3" * 32), State(206 * s, "4" * 32)],
    }
    judge = Retention({b"": Policy(keep_last=5, keep_within_s=10**6)}, 300 * s)
    verdicts = {(path, verdict.state.manifest): verdict for path, verdict in judge.judge_all(history)}
    assert verdicts[(b"model.pt.tmp", "1" * 32)].folded and not verdicts[(b"model.pt.tmp", "1" * 32)].kept
    assert verdicts[(b"model.pt", "1" * 32)].kept
    assert [verdicts[(b"log.txt", m * 32)].folded for m in "234"] == [True, True, False]


def test_a_policy_and_two_runs_a_grace_apart_free_what_retention_drops_and_nothing_else(tmp_path):
    clock = WallClock()
    lake, store, _ = new_lake(clock)
    saved: dict[str, bytes] = {}

    async def main():
        mount = mount_on(tmp_path, "a" * 16, lake, clock=clock)
        async with running(mount):
            for _ in range(4):
                data = os.urandom(2 * MIB)
                ino = await save(mount.files, b"model.pt", data)
                await published(mount.files)
                saved[mount.files.journal.version(mount.files.journal.inode(ino).version).manifest] = data
        lake.set_retention(b"", Policy(keep_last=2))
        packs_before = len(list(store.list("packs/")))
        first = collect(lake, clock)
        assert first.deleted == 0 and first.marked == 0, "everything is younger than the grace"
        clock.advance(GRACE + 1)
        second = collect(lake, clock)
        assert second.deleted == 0 and second.marked == 4  # 2 manifests and their 2 packs
        assert second.to_json()["versions"]["kept_by_rule"] == {"last": 1, "live": 1}
        assert second.to_json()["versions"]["by_policy"] == {"/": {"kept": 2, "collectable": 2}}
        assert_whole(lake, clock, saved)
        clock.advance(GRACE + 1)
        third = collect(lake, clock)
        assert third.deleted == 4 and third.deleted_bytes > 4 * MIB
        assert len(list(store.list("packs/"))) == packs_before - 2
        assert_whole(lake, clock, saved)
        assert check_lake(lake).collected == 2
        fresh = mount_on(tmp_path, "b" * 16, lake, clock=clock)
        async with running(fresh):
            assert await load(fresh.files, fresh.files.tree.lookup(ROOT, b"model.pt").ino) == data

    trio.run(main)


class DeletesRecorded(MemoryStore):
    """A memory store that records each delete_many call's keys."""

    def __init__(self, clock: WallClock) -> None:
        super().__init__(clock=clock)
        self.calls: list[list[str]] = []

    def delete_many(self, keys: list[str]) -> None:
        self.calls.append(list(keys))
        super().delete_many(keys)


def test_gc_deletes_in_runs_and_every_manifest_before_any_pack(tmp_path):
    """On S3 a run of keys is one DeleteObjects; the order (manifests, then packs) is what keeps a
    reader from finding a manifest whose pack is gone."""
    clock = WallClock()
    store = DeletesRecorded(clock)
    lake, _, _ = new_lake(clock, store=store)

    async def main():
        mount = mount_on(tmp_path, "a" * 16, lake, clock=clock)
        async with running(mount):
            for _ in range(5):
                await save(mount.files, b"model.pt", os.urandom(MIB))
                await published(mount.files)
        lake.set_retention(b"", Policy(keep_last=1))
        for _ in range(3):
            report = collect(lake, clock)
            clock.advance(GRACE + 1)
        assert report.deleted >= 8  # 4 manifests and their packs
        deleted = [key for call in store.calls for key in call]
        assert len(deleted) == report.deleted and len(store.calls) == 2
        kinds = [key.split("/", 1)[0] for key in deleted]
        assert kinds == ["manifests"] * 4 + ["packs"] * (report.deleted - 4)
        assert not set(deleted) & set(store.list(""))

    trio.run(main)


async def _save_version(mount, name: bytes, data: bytes, saved: dict[str, bytes]) -> str:
    ino = await save(mount.files, name, data)
    await published(mount.files)
    manifest = mount.files.journal.version(mount.files.journal.inode(ino).version).manifest
    saved[manifest] = data
    return manifest


def _packs_of(lake: Lake, manifest: str) -> set[str]:
    return lake.get_manifest(manifest).object_keys()


async def _superseded_and_marked(mount, lake: Lake, clock: WallClock, old: bytes, saved: dict[str, bytes]):
    """Save `old`, then other bytes over it, keep the last version only, and let GC mark `old`'s
    manifest and pack: (that GC run's report, the pack)."""
    first = await _save_version(mount, b"model.pt", old, saved)
    await _save_version(mount, b"model.pt", os.urandom(2 * MIB), saved)
    lake.set_retention(b"", Policy(keep_last=1))
    clock.advance(GRACE + 1)
    report = collect(lake, clock)
    pack, = _packs_of(lake, first)
    return report, pack


def test_dedup_against_a_freshly_marked_pack_names_it_and_the_sweep_keeps_it(tmp_path):
    """A mount saves again what GC has just marked: the manifest names the marked pack (the sweep,
    a grace after the mark, sees it) and nothing is uploaded twice."""
    clock = WallClock()
    lake, store, _ = new_lake(clock)
    saved: dict[str, bytes] = {}
    old = os.urandom(2 * MIB)

    async def main():
        mount = mount_on(tmp_path, "a" * 16, lake, clock=clock)
        async with running(mount):
            marking, pack = await _superseded_and_marked(mount, lake, clock, old, saved)
            assert marking.marked == 2
            again = await _save_version(mount, b"copy.pt", old, saved)
            assert pack in _packs_of(lake, again)
            clock.advance(GRACE + 1)
            report = collect(lake, clock)
            assert report.rescued == 1 and store.size(pack) is not None
            assert_whole(lake, clock, saved)

    trio.run(main)


def test_dedup_against_a_pack_marked_too_long_ago_uploads_the_chunks_again(tmp_path):
    clock = WallClock()
    lake, store, _ = new_lake(clock)
    saved: dict[str, bytes] = {}
    old = os.urandom(2 * MIB)

    async def main():
        mount = mount_on(tmp_path, "a" * 16, lake, clock=clock)
        async with running(mount):
            _, pack = await _superseded_and_marked(mount, lake, clock, old, saved)
            clock.advance(GRACE - 1)  # past the mark's deadline for writers (grace - lease)
            again = await _save_version(mount, b"copy.pt", old, saved)
            assert pack not in _packs_of(lake, again)
            clock.advance(2)
            report = collect(lake, clock)
            assert report.deleted == 2 and store.size(pack) is None
            assert_whole(lake, clock, saved)

    trio.run(main)


@pytest.mark.parametrize("tombstone", [True, False], ids=["tombstone", "head"])
def test_a_mount_whose_chunk_locations_outlived_a_sweep_uploads_them_again(tmp_path, tombstone):
    """borg #9748: a cache dir that remembers chunks in a pack GC has since deleted (the mount was
    offline, or its cache dir restored) must not name that pack: the marks' tombstone says so, and
    once the tombstone has expired, a HEAD does."""
    clock = WallClock()
    lake, store, _ = new_lake(clock)
    saved: dict[str, bytes] = {}
    old = os.urandom(2 * MIB)

    async def main():
        offline = mount_on(tmp_path, "a" * 16, lake, clock=clock)
        async with running(offline):
            first = await _save_version(offline, b"model.pt", old, saved)
        pack, = _packs_of(lake, first)
        chunk = lake.get_manifest(first).chunks[0][0]
        other = mount_on(tmp_path, "b" * 16, lake, clock=clock)
        async with running(other):
            await _save_version(other, b"model.pt", os.urandom(2 * MIB), saved)
        lake.set_retention(b"", Policy(keep_last=1))
        clock.advance(GRACE + 1)
        collect(lake, clock)
        clock.advance(GRACE + 1)
        assert collect(lake, clock).deleted == 2 and store.size(pack) is None
        if not tombstone:
            clock.advance(2 * GRACE + 1)
            collect(lake, clock)
            assert pack not in read_marks(store)[1].deleted
        back = mount_on(tmp_path, "a" * 16, lake, clock=clock)  # the same cache dir, stale locations
        assert back.files.journal.chunk_location(chunk) is not None
        async with running(back):
            again = await _save_version(back, b"copy.pt", old, saved)
            assert pack not in _packs_of(lake, again)
            assert (back.uploader.leases.heads > 0) is not tombstone
        assert_whole(lake, clock, saved)

    trio.run(main)


def test_the_cut_off_is_taken_before_the_scan(tmp_path):
    """JuiceFS #5068: objects written while a long scan runs are younger than its cut-off, however
    long the scan takes; a cut-off taken after the scan would mark an upload in flight."""
    clock = WallClock()
    lake, store, _ = new_lake(clock)
    saved: dict[str, bytes] = {}

    async def main():
        mount = mount_on(tmp_path, "a" * 16, lake, clock=clock)
        async with running(mount):
            await _save_version(mount, b"model.pt", os.urandom(2 * MIB), saved)
    trio.run(main)
    lake.set_retention(b"", Policy(keep_last=1))
    clock.advance(GRACE + 1)
    in_flight = "packs/abc/" + "ab" * 16

    def slow_scan(phase: str, done: int, total: int) -> None:
        if phase == "reading the history":
            store.put(in_flight, b"a pack of an upload whose manifest is not written yet")
            clock.advance(2 * GRACE)  # the scan takes longer than the grace
    report = GarbageCollector(lake, now=clock, progress=slow_scan).run()
    assert report.marked == 0 and in_flight not in read_marks(store)[1].marked


def test_a_run_that_dies_mid_sweep_leaves_the_lake_whole_and_the_next_run_finishes(tmp_path):
    clock = WallClock()
    lake, store, faults = new_lake(clock, faulty=True)
    saved: dict[str, bytes] = {}

    async def main():
        mount = mount_on(tmp_path, "a" * 16, lake, clock=clock)
        async with running(mount):
            for _ in range(5):
                await _save_version(mount, b"model.pt", os.urandom(MIB + 1000), saved)
    trio.run(main)
    lake.set_retention(b"", Policy(keep_last=1))
    clock.advance(GRACE + 1)
    collect(lake, clock)
    clock.advance(GRACE + 1)
    deleting = faults.fail("delete", "packs/", kind="permanent")
    with pytest.raises(PermanentStoreError):
        collect(lake, clock)
    faults.faults.remove(deleting)
    assert_whole(lake, clock, saved)  # manifests went first: nothing kept names a missing pack
    report = collect(lake, clock)
    assert report.deleted == 4 and not list(store.list("gc/lock"))
    assert len(list(store.list("packs/"))) == 1
    assert_whole(lake, clock, saved)


def test_a_second_run_is_refused_while_the_first_holds_the_lock(tmp_path):
    clock = WallClock()
    lake, store, _ = new_lake(clock)
    store.put("gc/lock", json.dumps({"run": "dead", "host": "h", "pid": 1, "refreshed_ns": clock()}).encode())
    with pytest.raises(GcBusy, match="--break-lock"):
        collect(lake, clock)
    assert collect(lake, clock, dry_run=True).deleted == 0  # a dry run takes no lock
    collect(lake, clock, break_lock=True)
    clock.advance(11 * 60)
    store.put("gc/lock", json.dumps({"run": "dead", "refreshed_ns": clock() - 11 * 60 * 10**9}).encode())
    collect(lake, clock)  # a lock not refreshed for 10 minutes is taken over


@pytest.mark.parametrize("kind", ["memory", "s3"])
def test_gc_racing_three_mounts_that_keep_saving(tmp_path, kind, request):
    """Three mounts save new and repeated data (deduplicating against chunks GC is marking) while
    GC runs beside their saves and the clock runs past graces; after each run the lake is whole.
    On moto_server the clock is the real one (S3 stamps objects with its own), with a 2 s grace."""
    if kind == "s3":
        url, endpoint = request.getfixturevalue("s3_url")
        clock, grace = RealClock(), 2
        lake, store, _ = new_lake(clock, store=open_store(url, endpoint_url=endpoint), grace=grace)
    else:
        clock, grace = WallClock(), GRACE
        lake, store, _ = new_lake(clock)
    saved: dict[str, bytes] = {}
    pool = [os.urandom(MIB + 4096) for _ in range(6)]
    lake.set_retention(b"", Policy(keep_last=1))

    async def main():
        mounts = [mount_on(tmp_path, name * 16, lake, clock=clock) for name in "abc"]
        async with running(mounts[0]), running(mounts[1]), running(mounts[2]):
            rng = __import__("random").Random(7)
            for step in range(12):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(trio.to_thread.run_sync, collect, lake, clock)
                    for index, mount in enumerate(mounts):
                        data = pool[rng.randrange(len(pool))] + bytes([step, index])
                        nursery.start_soon(_save_version, mount, f"r{index}-m{rng.randrange(2)}".encode(), data,
                                           saved)
                        nursery.start_soon(_save_version, mount, b"shared-%d" % index, pool[rng.randrange(6)], saved)
                clock.advance(rng.choice([0.5, grace / 2, grace + 1]))
                assert_whole(lake, clock, saved)
            deleted = sum(1 for key in read_marks(store)[1].deleted if key.startswith("packs/"))
            assert deleted > 0

    trio.run(main)


def test_bad_policies_are_refused():
    with pytest.raises(retention.PolicyError, match="at least one rule"):
        Policy()
    with pytest.raises(retention.PolicyError, match="keep-last"):
        Policy(keep_last=-1)
    with pytest.raises(retention.PolicyError, match="not a duration"):
        retention.parse_duration("7 days")
    assert retention.parse_duration("36h") == 36 * 3600
    with pytest.raises(CkptfsError):
        retention.decode_policy(b'{"format": 1, "path": "x", "keep_last": 2}', "retention/" + "0" * 32)


def test_a_policy_changed_while_mounts_run_takes_effect_at_the_next_run_and_a_mark_is_undone(tmp_path):
    """Marking is the soft delete: a policy widened before the sweep brings the marked versions back."""
    clock = WallClock()
    lake, store, _ = new_lake(clock)
    saved: dict[str, bytes] = {}

    async def main():
        mounts = [mount_on(tmp_path, name * 16, lake, clock=clock) for name in "ab"]
        async with running(mounts[0]), running(mounts[1]):
            lake.set_retention(b"", Policy(keep_last=4))
            for step in range(4):
                await _save_version(mounts[step % 2], b"m%d" % (step % 2), os.urandom(MIB + step), saved)
                await _save_version(mounts[step % 2], b"m%d" % (step % 2), os.urandom(MIB + step), saved)
            clock.advance(GRACE + 1)
            assert collect(lake, clock).marked == 0  # 4 versions of each file, all kept by last 4
            lake.set_retention(b"", Policy(keep_last=1))  # while the mounts run
            first = collect(lake, clock)
            assert first.marked > 0
            lake.set_retention(b"", Policy(keep_last=4))  # changed back before the sweep
            await _save_version(mounts[0], b"m0", os.urandom(MIB), saved)
            clock.advance(GRACE + 1)
            second = collect(lake, clock)
            assert second.rescued > 0 and second.deleted < first.marked
            assert_whole(lake, clock, saved)
            lake.clear_retention(b"")
            clock.advance(GRACE + 1)
            assert collect(lake, clock).marked == 0  # no policy: nothing is collectable
            assert_whole(lake, clock, saved)

    trio.run(main)


def _stored(store: MemoryStore) -> int:
    return sum(info.size for prefix in ("packs/", "manifests/") for info in store.list_stat(prefix))


def test_a_mostly_dead_pack_is_repacked_and_readers_follow_the_relocation(tmp_path):
    clock = WallClock()
    lake, store, _ = new_lake(clock)
    saved: dict[str, bytes] = {}
    rng = __import__("random").Random(3)
    first = rng.randbytes(6 * MIB)
    second = first[:3 * MIB] + rng.randbytes(3 * MIB)  # shares its first chunks (< half) with the first

    async def main():
        mount = mount_on(tmp_path, "a" * 16, lake, clock=clock)
        async with running(mount):
            old = await _save_version(mount, b"model.pt", first, saved)
            await _save_version(mount, b"model.pt", second, saved)
        old_pack, = _packs_of(lake, old)
        lake.set_retention(b"", Policy(keep_last=1))
        clock.advance(GRACE + 1)
        report = collect(lake, clock)
        assert report.repacked == 1 and report.repacked_bytes < 3 * MIB < report.repack_frees
        assert list(store.list("relocations/"))
        assert_whole(lake, clock, saved)
        before = _stored(store)
        for _ in range(2):  # the old manifest goes, then the old pack (no longer named once relocated)
            clock.advance(GRACE + 1)
            collect(lake, clock)
            assert_whole(lake, clock, saved)
        assert store.size(old_pack) is None
        assert _stored(store) < before - 3 * MIB
        fresh = mount_on(tmp_path, "b" * 16, lake, clock=clock)
        async with running(fresh):
            assert await load(fresh.files, fresh.files.tree.lookup(ROOT, b"model.pt").ino) == second
        # The relocation stays while a manifest names the old pack (the second version reads its
        # first chunks through it), and goes once none does: relocations no longer pile up.
        relocation, = store.list("relocations/")
        third = rng.randbytes(2 * MIB)
        async with running(fresh):
            await _save_version(fresh, b"model.pt", third, saved)
        for _ in range(2):  # the second version is unkept now: marked, then collected
            clock.advance(GRACE + 1)
            report = collect(lake, clock)
            assert store.size(relocation) is not None and report.relocations_deleted == 0
            assert_whole(lake, clock, saved)
        clock.advance(GRACE + 1)
        report = collect(lake, clock)  # nothing in the lake names the old pack any more
        assert report.relocations_deleted == 1 and not list(store.list("relocations/"))
        assert_whole(lake, clock, saved)
        another = mount_on(tmp_path, "c" * 16, lake, clock=clock)
        async with running(another):
            assert await load(another.files, another.files.tree.lookup(ROOT, b"model.pt").ino) == third

    trio.run(main)


def test_packs_of_small_chunks_only_are_merged(tmp_path):
    """A state dict of small tensors is cut into small chunks (chunker profile 3: a chunk per record),
    each save a small pack of its own: GC merges them."""
    import io

    import torch
    clock = WallClock()
    lake, store, _ = new_lake(clock)
    saved: dict[str, bytes] = {}

    async def main():
        mount = mount_on(tmp_path, "a" * 16, lake, clock=clock)
        async with running(mount):
            for index in range(3):
                buffer = io.BytesIO()
                torch.save({f"t{n}": torch.randn(4096) for n in range(12)}, buffer)
                await _save_version(mount, b"small-%d" % index, buffer.getvalue(), saved)
        lake.set_retention(b"", Policy(keep_last=1))
        assert len(list(store.list("packs/"))) == 3
        clock.advance(GRACE + 1)
        assert collect(lake, clock).repacked == 3
        for _ in range(2):
            clock.advance(GRACE + 1)
            collect(lake, clock)
        assert len(list(store.list("packs/"))) == 1
        assert_whole(lake, clock, saved)

    trio.run(main)


class SlowMarksStore(MemoryStore):
    """Listing GC's marks takes longer than half a writer's lease."""

    def list(self, prefix: str, start_after: str | None = None):
        if prefix.startswith("gc/marks/"):
            time.sleep(GRACE / 4 / 2 + 0.3)
        return super().list(prefix, start_after)


def test_a_marks_read_slower_than_half_a_lease_does_not_stop_uploads(tmp_path):
    """The view was read again as long as it was older than half a lease when the read ended: a
    read slower than that never ended the loop, and no manifest was ever written (found on the S3
    model, whose first-byte latency made every read that slow at a grace of 2 s)."""
    clock = WallClock()
    store = SlowMarksStore(clock=clock)
    store.put("lake.json", json.dumps({"format": "ckptfs-lake", "version": 4, "created_ns": 0,
                                       "gc_grace_s": GRACE, "max_clock_skew_s": 0, "fold_s": 0}).encode())
    lake = Lake(RetryingStore(store, first_delay=0.001, max_delay=0.01))
    lake.open()
    saved: dict[str, bytes] = {}

    async def main():
        mount = mount_on(tmp_path, "a" * 16, lake, clock=clock)
        async with running(mount):
            with trio.fail_after(30):
                await _save_version(mount, b"model.pt", os.urandom(2 * MIB), saved)
                clock.advance(GRACE)  # the view is stale: the next upload reads it again, once
                await _save_version(mount, b"model.pt", os.urandom(2 * MIB), saved)

    trio.run(main)


def test_a_mount_runs_gc_on_a_schedule(tmp_path):
    clock = WallClock()
    lake, store, _ = new_lake(clock)
    lake.set_retention(b"", Policy(keep_last=1))

    async def main():
        mount = mount_on(tmp_path, "a" * 16, lake, clock=clock, gc_every_s=0.2)
        async with running(mount):
            await _save_version(mount, b"model.pt", os.urandom(MIB), {})
            with trio.fail_after(10):
                while mount.status().get("gc_runs", 0) < 2:
                    await trio.sleep(0.05)
            assert mount.status()["gc_last"]["versions"]["total"] == 1
            assert read_marks(store) is not None  # each run wrote its marks

    trio.run(main)


class BarrierStore(MemoryStore):
    """A store whose GETs of `prefix` wait until `parties` of them are in flight at once: reading
    them one after the other breaks the barrier (the test fails, it does not time anything)."""

    def __init__(self, prefix: str, parties: int) -> None:
        super().__init__()
        self.prefix = prefix
        self.barrier = threading.Barrier(parties, timeout=30)

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        if key.startswith(self.prefix):
            self.barrier.wait()
        return super().get(key, start, end)


def test_collection_records_and_tags_are_read_side_by_side_and_a_failed_read_is_read_again():
    """A fresh mount's `ckptfs refresh` reads every record of what GC collected: one GET after the
    other, ~30 of them kept the soak's restarted job waiting 1.9 s. They are read in one round now;
    a record whose GET failed is read again next time, not taken as read."""
    store = BarrierStore("gc/collected/", parties=4)
    for number in range(8):
        store.put(f"gc/collected/run-{number}", json.dumps(
            {"manifests": [f"m{number}"], "collected_ns": number}).encode())
    seen: set[str] = set()
    assert read_collected(store, seen) == {f"m{number}": number for number in range(8)}
    assert len(seen) == 8
    store.put("gc/collected/run-8", json.dumps({"manifests": ["m8"], "collected_ns": 8}).encode())
    store.barrier = threading.Barrier(1)  # one record is new: read alone
    assert read_collected(store, seen) == {"m8": 8}  # the others are not read again

    faulty = FaultyStore(MemoryStore())
    faulty.put("gc/collected/run-0", json.dumps({"manifests": ["m0"], "collected_ns": 0}).encode())
    faulty.fail("get", "gc/collected/", kind="permanent", times=1)
    seen = set()
    with pytest.raises(PermanentStoreError):
        read_collected(faulty, seen)
    assert seen == set()  # not read: the next refresh reads it
    assert read_collected(faulty, seen) == {"m0": 0} and seen == {"gc/collected/run-0"}

    tags = BarrierStore(keeps.TAGS, parties=3)
    for name in ("c", "a", "b"):
        keeps.put_tag(tags, keeps.Tag(name, 1, b"run", ()))
    assert [tag.name for tag in keeps.read_tags(tags)] == ["a", "b", "c"]


def test_collection_records_are_folded_into_one_once_they_pile_up(tmp_path, monkeypatch):
    """Each run that deletes manifests leaves a record, and every fresh mount reads them all (a run
    every 5 minutes: 288 a day). Past FOLD_RECORDS, the run that adds one writes them all as one
    record and deletes them: what readers learn is the same, from one GET; fsck still counts the
    history states naming those manifests as collected, and a fresh mount still leaves them out."""
    monkeypatch.setattr(gc_module, "FOLD_RECORDS", 2)
    clock = WallClock()
    lake, store, _ = new_lake(clock)
    lake.set_retention(b"", Policy(keep_last=1))

    async def main():
        mount = mount_on(tmp_path, "a" * 16, lake, clock=clock)
        async with running(mount):
            for _ in range(4):  # each round: a version retention drops, marked, then deleted
                for _ in range(2):
                    await save(mount.files, b"model.pt", os.urandom(MIB))
                    await published(mount.files)
                collect(lake, clock)
                clock.advance(GRACE + 1)
                collect(lake, clock)
                clock.advance(GRACE + 1)
        collect(lake, clock)  # the last round's drop, marked, is deleted a grace later
        records = list(store.list(gc_module.COLLECTED))
        assert len(records) <= 2, records  # folded: never more than FOLD_RECORDS
        collected = read_collected(store)
        assert len(collected) == 7  # 8 versions saved, the newest kept
        assert check_lake(lake).collected == 7
        fresh = mount_on(tmp_path, "b" * 16, lake, clock=clock)
        async with running(fresh):
            await fresh.following.refresh(sweep=True)  # what a daemon does as it starts
            assert len(fresh.files.tree.view.collected) == 7

    trio.run(main)


class FoldsWhileRead(MemoryStore):
    """A store on which a fold lands between a reader's LIST of the records and its GET of one."""

    def __init__(self, folded_key: str, fold_key: str, fold: bytes) -> None:
        super().__init__()
        self.folded_key, self.fold_key, self.fold = folded_key, fold_key, fold

    def get(self, key: str) -> bytes:
        if key == self.folded_key and self.fold is not None:
            self.put(self.fold_key, self.fold)  # the fold is written first, then what it folds goes
            self.delete(key)
            self.fold = None
        return super().get(key)


def test_a_record_folded_while_it_is_read_is_read_from_the_fold():
    record = json.dumps({"format": 1, "collected_ns": 5, "manifests": ["m5"]}).encode()
    fold = json.dumps({"format": 1, "collected_ns": 9, "manifests": ["m5", "m6"]}).encode()
    store = FoldsWhileRead("gc/collected/0000000000000005-aaaaaaaa", "gc/collected/0000000000000009-bbbbbbbb", fold)
    store.put("gc/collected/0000000000000005-aaaaaaaa", record)
    store.put("gc/collected/0000000000000006-cccccccc",
              json.dumps({"format": 1, "collected_ns": 6, "manifests": ["m6"]}).encode())
    seen: set[str] = set()
    assert read_collected(store, seen) == {"m5": 9, "m6": 9}
    assert seen == {"gc/collected/0000000000000005-aaaaaaaa", "gc/collected/0000000000000006-cccccccc",
                    "gc/collected/0000000000000009-bbbbbbbb"}


def test_a_lock_whose_holder_on_this_machine_is_gone_is_taken_over_at_once(tmp_path, monkeypatch):
    """A job killed on a node leaves the lock of the GC run its mount was making. The next run on
    that node sees the holder gone (same boot and pid namespace, no process with that pid and start
    time) and takes the lock at once, where it used to wait 10 minutes or for `--break-lock`. A
    holder that still runs, one on another machine, and a lock that names no process are waited
    for as before."""
    clock = WallClock()
    lake, store, _ = new_lake(clock)

    def lock(**holder) -> None:
        store.put("gc/lock", json.dumps({"run": "old", "refreshed_ns": clock(), **holder}).encode())

    me = gclock.this_process()
    assert me["boot"] and me["pidns"] and me["pid_start"] is not None
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock(**{**me, "pid": child.pid, "pid_start": gclock.start_ticks(child.pid)})
        with pytest.raises(GcBusy, match="--break-lock"):
            collect(lake, clock)  # it still runs
    finally:
        child.kill()
        child.wait()
    collect(lake, clock)  # it is gone: taken over at once
    assert not list(store.list("gc/lock"))
    lock(**{**me, "pid_start": me["pid_start"] + 1})  # this pid, but another process's start
    collect(lake, clock)
    lock(**{**me, "pidns": "pid:[1]", "pid": child.pid})  # a pid of another namespace: cannot tell
    with pytest.raises(GcBusy):
        collect(lake, clock)
    lock(run="old", host=me["host"], pid=child.pid)  # a lock that names no boot: cannot tell
    with pytest.raises(GcBusy):
        collect(lake, clock)
    # Another boot: this machine restarted (same name, last rewritten before this boot and over two
    # rewrites ago), or another machine of its own (or of the same name, rewritten lately).
    monkeypatch.setattr(gclock, "booted_ns", lambda: time.time_ns() - 60 * 10**9)
    three_minutes_ago = clock() - 180 * 10**9
    lock(**{**me, "boot": "another", "refreshed_ns": three_minutes_ago})
    collect(lake, clock)
    lock(**{**me, "boot": "another", "host": "elsewhere", "refreshed_ns": three_minutes_ago})
    with pytest.raises(GcBusy):
        collect(lake, clock)
    lock(**{**me, "boot": "another"})  # rewritten just now: a live machine that shares the name
    with pytest.raises(GcBusy):
        collect(lake, clock)
