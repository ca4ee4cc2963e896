"""Several mounts on one lake, at the file system layer (no kernel mount): each follows what the
others publish (engine/follower.py + files/remote.py), conflicts resolve the same way everywhere,
and nothing a mount is writing is lost. A randomized model drives three mounts at once."""

import json
import os
import stat
import threading
from contextlib import asynccontextmanager

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptfs.errors import FsError
from ckptfs.files import Caller
from ckptfs.lake import Lake, namespace
from ckptfs.mount import Mount
from ckptfs.store import RetryingStore
from ckptfs.store.memory import MemoryStore
from tests.layers import journal_tree, lake_tree, mount_on, running

ROOT = 1
ME = Caller(uid=os.getuid(), gid=os.getgid())


def new_lake(**descriptor) -> Lake:
    """A lake in memory; `descriptor` fields (late_publish_s, max_clock_skew_s) go in its lake.json."""
    store = MemoryStore()
    if descriptor:
        store.put("lake.json", json.dumps({"format": "ckptfs-lake", "version": 3, **descriptor}).encode())
    lake = Lake(RetryingStore(store, first_delay=0.001, max_delay=0.01))
    lake.open()
    return lake


class Node:
    """One mount: its file system layer, its follower, and helpers that act like a user."""

    def __init__(self, mount: Mount) -> None:
        self.mount = mount
        self.files = mount.files
        self.name = mount.mount_id
        self.follower = mount.following  # refresh(), refresh(sweep=True): what the daemon runs
        self.snapshots = mount.snapshots

    def ino(self, path: bytes) -> int:
        ino = ROOT
        for part in path.split(b"/"):
            ino = self.files.tree.lookup(ino, part).ino
        return ino

    def parent(self, path: bytes, *, create: bool = True) -> int:
        ino = ROOT
        for part in path.split(b"/")[:-1]:
            try:
                ino = self.files.tree.lookup(ino, part).ino
            except FsError:
                if not create:
                    raise
                ino = self.files.tree.mkdir(ino, part, 0o755, ME).ino
        return ino

    async def write(self, path: bytes, data: bytes) -> None:
        parent = self.parent(path)
        name = path.rpartition(b"/")[2]
        try:
            opened = await self.files.handles.open(self.files.tree.lookup(parent, name).ino, os.O_WRONLY | os.O_TRUNC)
        except FsError:
            opened, _ = self.files.handles.create(parent, name, 0o644, os.O_WRONLY, ME)
        await self.files.handles.write(opened.fh, 0, data)
        self.files.handles.flush(opened.fh)
        self.files.handles.release(opened.fh)

    async def change(self, op: str, path: bytes, other: bytes, data: bytes) -> bool:
        """One operation of the randomized models; False if the file system refused it (missing,
        exists, not a directory): the model allows what the file system does not."""
        try:
            if op == "write":
                await self.write(path, data)
            elif op == "unlink":
                self.files.tree.unlink(self.parent(path, create=False), path.rpartition(b"/")[2])
            elif op == "mkdir":
                self.files.tree.mkdir(self.parent(path), path.rpartition(b"/")[2], 0o755, ME)
            elif op == "link":
                self.files.tree.link(self.ino(path), self.parent(other), other.rpartition(b"/")[2])
            else:
                self.files.tree.rename(self.parent(path, create=False), path.rpartition(b"/")[2],
                                       self.parent(other), other.rpartition(b"/")[2])
        except FsError:
            return False
        return True

    async def read(self, path: bytes) -> bytes:
        opened = await self.files.handles.open(self.ino(path), os.O_RDONLY)
        try:
            return await self.files.handles.read(opened.fh, 0, 1 << 30)
        finally:
            self.files.handles.release(opened.fh)

    async def sync(self) -> None:
        await self.files.engine.wait_published(self.files.journal.outbox_tail())

    def tree(self) -> dict[bytes, tuple[str, object]]:
        """path -> (kind, manifest or target) of every entry, from the journal."""
        return journal_tree(self.files)


@asynccontextmanager
async def mounts(tmp_path, lake: Lake, count: int, **options):
    nodes = [Node(mount_on(tmp_path, f"m{index}", lake, **options)) for index in range(count)]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.mount.run_engine)
        yield nodes
        nursery.cancel_scope.cancel()


async def settle(nodes: list[Node]) -> None:
    for node in nodes:
        await node.sync()
    for node in nodes:
        await node.follower.refresh()


def test_a_mount_follows_what_another_publishes(tmp_path):
    lake = new_lake()

    async def main():
        async with mounts(tmp_path, lake, 2) as (a, b):
            await a.write(b"run/step-1/model.pt", b"weights")
            await a.sync()
            assert (await b.follower.refresh())["events"] >= 2
            assert await b.read(b"run/step-1/model.pt") == b"weights"
            await b.write(b"run/step-1/model.pt", b"better")
            files = b.files
            files.tree.rename(b.parent(b"run/x"), b"step-1", b.parent(b"run/x"), b"step-2")
            await settle([a, b])
            assert await a.read(b"run/step-2/model.pt") == b"better"
            assert a.tree() == b.tree() == lake_tree(lake)
            history = a.files.journal.history(b"run/step-2/model.pt")
            assert len([version for _, version in history if version is not None]) == 1  # moved with the rename
            a.files.tree.unlink(a.parent(b"run/step-2/model.pt"), b"model.pt")
            await settle([a, b])
            assert b"run/step-2/model.pt" not in b.tree()
            idle = await b.follower.refresh()
            assert (idle["segments"], idle["events"]) == (0, 0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_two_mounts_writing_one_path_keep_both_versions_and_show_the_same_one(tmp_path):
    lake = new_lake()

    async def main():
        async with mounts(tmp_path, lake, 2) as (a, b):
            await a.write(b"last.ckpt", b"from a")
            await b.write(b"last.ckpt", b"from b")  # later: b's clock and stamp are after a's
            await settle([a, b])
            assert await a.read(b"last.ckpt") == await b.read(b"last.ckpt") == b"from b"
            for node in (a, b):
                versions = [v for _, v in node.files.journal.history(b"last.ckpt") if v is not None]
                assert len(versions) == 2
            assert a.tree() == b.tree() == lake_tree(lake)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_file_being_written_survives_another_mounts_unlink_and_wins(tmp_path):
    lake = new_lake()

    async def main():
        async with mounts(tmp_path, lake, 2) as (a, b):
            await a.write(b"f", b"old")
            await settle([a, b])
            opened = await a.files.handles.open(a.ino(b"f"), os.O_WRONLY | os.O_TRUNC)
            await a.files.handles.write(opened.fh, 0, b"new data")
            b.files.tree.unlink(ROOT, b"f")
            await settle([a, b])
            assert await a.read(b"f") == b"new data"  # still here, still open for writing
            a.files.handles.flush(opened.fh)
            a.files.handles.release(opened.fh)
            await settle([a, b])
            assert await b.read(b"f") == b"new data"
            assert a.tree() == b.tree() == lake_tree(lake)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_mount_never_stamps_below_what_it_has_seen(tmp_path):
    """A node whose clock is behind: after reading an event from the future, its own next change
    is stamped later, so its newer checkpoint is not hidden behind an older one."""
    lake = new_lake()

    async def main():
        async with mounts(tmp_path, lake, 2) as (a, b):
            future = a.files.outbox.event_time() + 3600 * 10**9  # a's clock an hour ahead
            a.files.outbox.observe(future)
            await a.write(b"x", b"from a, an hour ahead")
            await settle([a, b])
            await b.write(b"x", b"from b, written after it")
            await settle([a, b])
            assert await a.read(b"x") == await b.read(b"x") == b"from b, written after it"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_mount_started_from_a_snapshot_never_stamps_below_what_it_folds(tmp_path):
    """The same with every event folded into a snapshot: the new mount reads no event, only the
    tree, and must still stamp its changes after the newest time the snapshot holds."""
    lake = new_lake(late_publish_s=0, max_clock_skew_s=0)

    async def main():
        async with mounts(tmp_path, lake, 1) as (a,):
            a.files.outbox.observe(a.files.outbox.event_time() + 3600 * 10**9)  # a's clock an hour ahead
            await a.write(b"x", b"from a, an hour ahead")
            await a.sync()
            ahead = a.files.outbox.event_time()
            await a.follower.refresh(sweep=True)
            written = await a.snapshots.swept(ahead + 1, force=True)  # everything folded: no tail
            assert written["written"] and written["tail_events"] == 0
        b = Node(mount_on(tmp_path, "b", lake))
        assert not b.mount.replay.events and b.tree().keys() == {b"x"}
        assert b.files.outbox.event_time() > ahead

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_remount_on_its_cache_dir_catches_up(tmp_path):
    lake = new_lake()

    async def main():
        async with mounts(tmp_path, lake, 2) as (a, b):
            await a.write(b"before", b"1")
            for index in range(20):
                await a.write(b"old/%d" % index, b"1")
            await settle([a, b])
        again = Node(mount_on(tmp_path, "m1", lake))  # m1's cache dir, m0 writes meanwhile
        first = Node(mount_on(tmp_path, "m0", lake))
        async with trio.open_nursery() as nursery:
            await nursery.start(first.mount.run_engine)
            await first.write(b"while away", b"2")
            await first.sync()
            await again.follower.refresh()
            assert again.tree().keys() - {b"old"} - {b"old/%d" % i for i in range(20)} == {b"before", b"while away"}
            # It compared only what changed since it last reconciled: one entry made, no full pass.
            assert again.files.remote.changed == 1 and again.files.remote.compared <= 2, again.files.remote.compared
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def _history(node: Node, path: bytes) -> list[tuple[int, str | None]]:
    """(time, manifest or None for a deletion) of every state of a path this mount's journal keeps."""
    journal = node.files.journal
    return [(time_ns, journal.version(version).manifest if version is not None else None)
            for time_ns, version in journal.history(path)]


def test_a_remount_compares_only_what_changed_while_away(tmp_path):
    """A restart on an existing cache dir compares what the events it had not reconciled touch:
    nothing for its own published changes (renames included), and for a directory another mount
    renamed meanwhile, the old paths and the new; the tree and every path's history then match
    those of a mount rebuilt from the lake."""
    lake = new_lake()
    shards = [b"run/step-1/shard-%d" % index for index in range(20)]
    unrelated = [b"other/file-%d" % index for index in range(30)]

    async def main():
        async with mounts(tmp_path, lake, 2) as (a, b):
            for path in shards + unrelated:
                await a.write(path, path)
            await a.write(b"last.ckpt.tmp", b"last")
            a.files.tree.rename(ROOT, b"last.ckpt.tmp", ROOT, b"last.ckpt")
            a.files.tree.rename(a.ino(b"run"), b"step-1", a.ino(b"run"), b"step-0")
            a.files.tree.rename(a.ino(b"run"), b"step-0", a.ino(b"run"), b"step-1")
            await settle([a, b])
        again = Node(mount_on(tmp_path, "m0", lake))  # a restarts: it made all of that itself
        async with running(again.mount):
            await again.follower.refresh()
            assert again.files.remote.compared == 0
            again.files.tree.rename(again.ino(b"run"), b"step-1", again.ino(b"run"), b"step-2")
            await again.write(b"run/step-2/extra", b"extra")
            await again.sync()
        back = Node(mount_on(tmp_path, "m1", lake))  # b was away meanwhile
        async with running(back.mount):
            await back.follower.refresh()
        fresh = Node(mount_on(tmp_path, "fresh", lake))
        assert back.tree() == fresh.tree() == lake_tree(lake)
        moved = [path.replace(b"step-1", b"step-2") for path in shards]
        for path in shards + moved + unrelated + [b"run/step-2/extra", b"last.ckpt"]:
            assert _history(back, path) == _history(fresh, path), path
        assert [manifest for _, manifest in _history(back, shards[0])][-1] is None  # renamed away
        # run, its old and new directory, the shards under each, extra: not the 30 unrelated files
        assert 0 < back.files.remote.compared <= 2 * len(shards) + 4, back.files.remote.compared

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


OPERATIONS = st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["write", "unlink", "rename", "mkdir", "link"]),
                                st.sampled_from([b"a", b"b", b"d/x", b"d/y", b"e"]),
                                st.sampled_from([b"a", b"b", b"d/x", b"d/y", b"e"]),
                                st.binary(min_size=1, max_size=64), st.booleans()),
                      min_size=1, max_size=25)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(operations=OPERATIONS)
def test_three_mounts_converge_on_the_lake_s_tree(tmp_path_factory, operations):
    """Random changes on three mounts, some published and followed at once, some later: once every
    mount has published and refreshed, all three show exactly the tree the lake replays to."""
    tmp_path = tmp_path_factory.mktemp("model")
    lake = new_lake()

    async def main():
        async with mounts(tmp_path, lake, 3) as nodes:
            for index, op, path, other, data, settle_now in operations:
                node = nodes[index]
                if not await node.change(op, path, other, data):
                    continue
                if settle_now:
                    await node.sync()
                    await nodes[(index + 1) % 3].follower.refresh()
            await settle(nodes)
            await settle(nodes)  # a second round: every mount has seen every other's last events
            expected = lake_tree(lake)
            for node in nodes:
                assert node.tree() == expected, node.name
                for path, (kind, _) in expected.items():
                    if kind == "file":
                        assert stat.S_ISREG(node.files.tree.attributes(node.ino(path)).mode)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(operations=OPERATIONS, snapshot_every=st.integers(1, 4))
def test_mounts_that_snapshot_and_fold_as_they_go_converge_and_a_new_mount_starts_from_a_snapshot(
        tmp_path_factory, operations, snapshot_every):
    """The same model with snapshots: the lake places every event no earlier than its publication
    (late_publish_s 0, no clock skew), so each sweep folds everything before it into the mount's
    base and writes a snapshot every few segments. Every mount, and one that starts at the end
    from the newest snapshot, shows the tree of the whole log replayed."""
    tmp_path = tmp_path_factory.mktemp("snapshots")
    lake = new_lake(late_publish_s=0, max_clock_skew_s=0)

    async def main():
        expected = None
        async with mounts(tmp_path, lake, 3, snapshot_every=snapshot_every) as nodes:
            for step, (index, op, path, other, data, settle_now) in enumerate(operations):
                node = nodes[index]
                if not await node.change(op, path, other, data):
                    continue
                if settle_now:
                    await node.sync()
                    await nodes[(index + 1) % 3].follower.refresh(sweep=step % 2 == 0)
            await settle(nodes)
            for node in nodes:
                await node.follower.refresh(sweep=True)
            expected = lake_tree(lake)
            for node in nodes:
                assert node.tree() == expected, node.name
                assert not node.mount.replay.events  # all folded: memory holds the tree, not the log
            if lake.snapshots():
                fresh = Node(mount_on(tmp_path, "fresh", lake))
                assert fresh.mount.replay.base.entries.keys() - {b""} or not expected  # read from the snapshot
                assert fresh.tree() == expected
                await fresh.follower.refresh(sweep=True)
                assert fresh.tree() == expected and fresh.files.remote.changed == 0
        # Each mount restarted on its cache dir shows the same, comparing only what it has not seen.
        for index in range(3):
            again = Node(mount_on(tmp_path, f"m{index}", lake))
            await again.follower.refresh(sweep=True)
            assert again.tree() == expected and again.files.remote.changed == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_an_idle_refresh_is_one_list_and_a_sweep_finds_what_the_feed_missed(tmp_path):
    lake = new_lake()
    store = lake.store.inner

    async def main():
        async with mounts(tmp_path, lake, 2) as (a, b):
            await b.follower.refresh()  # the first one sweeps every log
            before = b.mount.follower.lists
            for _ in range(3):
                assert (await b.follower.refresh())["segments"] == 0
            assert b.mount.follower.lists - before == 3  # one LIST of the feed each, whatever the mounts
            # A writer whose clock is far behind: its marker falls before the feed's look-back.
            await a.write(b"late", b"1")
            await a.sync()
            for key in list(store.list("feed/")):
                when, mount, seq = namespace.parse_feed_key(key)
                if mount == "m0":
                    store.delete(key)
                    store.put(namespace.feed_key(when - 3600 * 10**9, mount, seq), b"")
            await b.follower.refresh()
            assert b"late" not in b.tree()
            await b.follower.refresh(sweep=True)  # what ckptfs refresh does, and every few minutes
            assert await b.read(b"late") == b"1"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_change_held_back_by_an_open_file_applies_once_it_is_closed(tmp_path):
    """Open for reading and writing but never written: nothing of it is published, so no event
    will touch the path again; the change left waiting is applied at the next refresh after close."""
    lake = new_lake()

    async def main():
        async with mounts(tmp_path, lake, 2) as (a, b):
            await a.write(b"f", b"data")
            await settle([a, b])
            opened = await a.files.handles.open(a.ino(b"f"), os.O_RDWR)
            b.files.tree.unlink(ROOT, b"f")
            await settle([a, b])
            assert b"f" in a.tree()  # held: it is open for writing here
            a.files.handles.release(opened.fh)
            await a.follower.refresh()  # no new event; the deferred path is looked at again
            assert b"f" not in a.tree()
            assert a.tree() == b.tree() == lake_tree(lake)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_directory_s_mtime_never_goes_back_and_a_new_mount_shows_it(tmp_path):
    """Creating and removing entries changes a directory's mtime; publishing those changes and
    following the lake must not put back the time of its mkdir, and a mount that starts from the
    lake shows the times the writing mount showed."""
    lake = new_lake()

    async def main():
        async with mounts(tmp_path, lake, 2) as (a, b):
            made = a.files.tree.mkdir(ROOT, b"d", 0o755, ME)
            d = made.ino
            seen = [made.mtime_ns]
            for step in range(4):
                await a.write(b"d/f%d" % step, b"x")
                if step % 2:
                    a.files.tree.unlink(d, b"f%d" % (step - 1))
                await a.sync()
                await a.follower.refresh()
                await b.follower.refresh()
                mtime = a.files.tree.attributes(d).mtime_ns
                assert mtime > seen[-1], f"step {step}: mtime went from {seen[-1]} to {mtime}"
                seen.append(mtime)
                assert b.files.tree.attributes(b.ino(b"d")).mtime_ns == mtime
            assert (await a.follower.refresh(sweep=True))["events"] == 0
            assert a.files.tree.attributes(d).mtime_ns == seen[-1]
        fresh = Node(mount_on(tmp_path, "fresh", lake))
        assert fresh.files.tree.attributes(fresh.ino(b"d")).mtime_ns == seen[-1]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_mount_does_not_reconcile_its_own_published_changes(tmp_path):
    """Following costs what other mounts publish: a mount that publishes thousands of changes of
    its own compares none of them with the lake's replay when it refreshes."""
    lake = new_lake()

    async def main():
        async with mounts(tmp_path, lake, 1) as (a,):
            for index in range(200):
                await a.write(b"ckpt/rank-%d.distcp" % index, b"shard")
            await a.sync()
            await a.follower.refresh()
            await a.follower.refresh(sweep=True)
            assert a.files.remote.compared == 0
            assert a.tree() == lake_tree(lake)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_path_set_answers_one_of_under_or_above_without_scanning():
    from ckptfs.files.paths import PathSet, ancestors

    assert list(ancestors(b"a/b/c")) == [b"", b"a", b"a/b"] and list(ancestors(b"")) == []
    held = PathSet([b"run/step-1/rank-0.distcp", b"run/last"])
    related = [b"", b"run", b"run/step-1", b"run/step-1/rank-0.distcp", b"run/step-1/rank-0.distcp/x", b"run/last"]
    unrelated = [b"run/step-2", b"run/step-1/rank-1.distcp", b"other", b"run/lastly", b"ru"]
    assert all(held.related(path) for path in related)
    assert not any(held.related(path) for path in unrelated)
    assert not PathSet().related(b"") and set(held) == {b"run/step-1/rank-0.distcp", b"run/last"}


class HeldSnapshots(MemoryStore):
    """A memory store whose snapshot PUTs wait until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.waiting = threading.Event()

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        if key.startswith("snapshots/"):
            self.waiting.set()
            assert self.release.wait(30), "never released"
        super().put(key, data, if_absent=if_absent)


def test_a_sweep_answers_before_the_snapshot_it_makes_due_is_written(tmp_path):
    """`latest` and `ckptfs refresh` sweep, and a sweep can make a snapshot due. The snapshot's
    PUT and the prune after it change nothing the mount shows, so a following mount writes it in
    a task of its own: the sweep answers while the PUT hangs, and the snapshot lands after."""
    store = HeldSnapshots()
    lake = Lake(RetryingStore(store, first_delay=0.001, max_delay=0.01))
    lake.open()

    async def main():
        async with mounts(tmp_path, lake, 1, snapshot_every=1) as (a,):
            a.snapshots.threshold = 1  # due after one segment (drawn between 1 and 2 otherwise)
            async with trio.open_nursery() as nursery:
                await nursery.start(a.mount.following.run)
                await a.write(b"ckpt/model.pt", b"weights")
                await a.sync()
                with trio.fail_after(30):
                    await a.follower.refresh(sweep=True)
                assert await trio.to_thread.run_sync(store.waiting.wait, 30)  # the writer is in its PUT
                assert a.snapshots.written == 0 and not lake.snapshots()
                store.release.set()
                with trio.fail_after(30):
                    while not a.snapshots.written:
                        await trio.sleep(0.01)
                assert len(lake.snapshots()) == 1
                nursery.cancel_scope.cancel()

    trio.run(main)


class HeldMountsListing(MemoryStore):
    """A memory store whose LIST of `mounts/`, while `hold` is set, waits (up to 10 s) for a LIST
    of some mount's log to begin, and records whether one did."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.log_listed = threading.Event()
        self.log_listed_during_mounts_listing: bool | None = None

    def list(self, prefix: str, start_after: str | None = None):
        if prefix.startswith("log/"):
            self.log_listed.set()
        if self.hold and prefix == "mounts/":
            self.log_listed_during_mounts_listing = self.log_listed.wait(10)
        return super().list(prefix, start_after)


def test_a_sweep_lists_the_logs_it_knows_while_it_lists_the_mounts(tmp_path):
    """A sweep (`ckptfs latest` waits for one) lists `mounts/` to find mounts it has never seen. It
    lists the logs of the mounts it knows meanwhile, not after, and a mount the listing adds is
    still read in the same sweep."""
    store = HeldMountsListing()
    lake = Lake(RetryingStore(store, first_delay=0.001, max_delay=0.01))
    lake.open()

    async def main():
        async with trio.open_nursery() as nursery:
            a = Node(mount_on(tmp_path, "a", lake))
            await nursery.start(a.mount.run_engine)
            await a.write(b"run/one.pt", b"1")
            await a.sync()
            b = Node(mount_on(tmp_path, "b", lake))  # knows a from its start
            c = Node(mount_on(tmp_path, "c", lake))  # b has never seen c
            for node in (b, c):
                await nursery.start(node.mount.run_engine)
            await a.write(b"run/two.pt", b"2")
            await c.write(b"run/three.pt", b"3")
            await a.sync()
            await c.sync()
            store.log_listed.clear()
            store.hold = True
            with trio.fail_after(30):
                result = await b.follower.refresh(sweep=True)
            store.hold = False
            assert store.log_listed_during_mounts_listing is True
            assert result["mounts"] == 3 and result["swept_at_ns"] is not None
            assert await b.read(b"run/two.pt") == b"2" and await b.read(b"run/three.pt") == b"3"
            nursery.cancel_scope.cancel()

    trio.run(main)


class FirstMountsListingHeld(MemoryStore):
    """A memory store whose first LIST of `mounts/` after `hold()` waits until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.held = threading.Event()  # set: the next LIST of mounts/ is the one to hold
        self.waiting = threading.Event()
        self.release = threading.Event()

    def list(self, prefix: str, start_after: str | None = None):
        if prefix == "mounts/" and self.held.is_set():
            self.held.clear()
            self.waiting.set()
            assert self.release.wait(30), "never released"
        return super().list(prefix, start_after)


def test_a_sweep_asked_for_while_another_look_is_out_does_not_wait_for_it(tmp_path):
    """A restart's `ckptfs latest` sweeps; a refresh already out (the periodic one, another
    `latest`) must not make it wait: it lists at once and answers with what is published, while
    the other look still hangs on the store. The other look, applied after, changes nothing (its
    segments are known) and the cursors never go back."""
    store = FirstMountsListingHeld()
    lake = Lake(RetryingStore(store, first_delay=0.001, max_delay=0.01))
    lake.open()

    async def main():
        async with mounts(tmp_path, lake, 2) as (a, b):
            await a.write(b"run/one.pt", b"1")
            await a.sync()
            results = []

            async def held_look():
                results.append(await b.follower.refresh(sweep=True))

            async with trio.open_nursery() as nursery:
                store.held.set()
                nursery.start_soon(held_look)
                assert await trio.to_thread.run_sync(store.waiting.wait, 30)
                await a.write(b"run/two.pt", b"2")
                await a.sync()
                with trio.fail_after(10):
                    second = await b.follower.refresh(sweep=True)
                assert not results  # the first look still hangs
                assert second["segments"] >= 2 and await b.read(b"run/two.pt") == b"2"
                cursors = dict(b.follower.follower.cursors)
                store.release.set()
            assert results and results[0]["swept_at_ns"] < second["swept_at_ns"]
            assert b.follower.follower.cursors == cursors
            assert await b.read(b"run/one.pt") == b"1" and await b.read(b"run/two.pt") == b"2"
            assert b.tree() == a.tree()

    trio.run(main)
