"""A reference model of several mounts on one lake, at the file system layer (no kernel).

Three mounts share a lake on a MemoryStore (faults injected by FaultyStore), each with its own cache
dir, under trio's MockClock. Random operations run on them: whole-file writes, pwrite, truncate,
rename, unlink, link, mkdir and rmdir (each mount in a subtree of its own, `m<i>/`, and all of them in
`shared/`), sync, refresh, a crash and restart of one mount (its tasks cancelled and its journal's
uncommitted transaction lost, as with kill -9, then the daemon's start-up repair), and store faults.

What each mount may show, checked after every operation:
* its own subtree is exactly what POSIX semantics (the model here) say its operations made, file
  contents read back included; a refused operation is refused by the model too;
* another mount's subtree, once this mount has refreshed, is one of that mount's states no older
  than its last sync (the lake publishes a mount's changes in order: never a torn or reordered one);
* no directory's mtime goes back (no operation here sets one with utimens);
* a refresh that finds nothing new compares nothing (own published changes are not compared).
At the end, after every mount has published and refreshed twice: every mount shows the lake's tree,
each subtree as its model says, the same directory times everywhere, and a mount that starts from
the lake shows those times too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptfs.errors import FsError
from ckptfs.files import Caller
from ckptfs.files.attributes import AttributeChanges
from ckptfs.lake import Lake
from ckptfs.mount import Mount
from ckptfs.store import RetryingStore
from ckptfs.store.faults import FaultyStore
from ckptfs.store.memory import MemoryStore
from tests.layers import journal_tree, lake_tree, mount_on

ROOT = 1
ME = Caller(uid=os.getuid(), gid=os.getgid())
MOUNTS = 3
NAMES = [b"a", b"b", b"d", b"d/x", b"d/y", b"e", b"e/z"]
DIR = "dir"

# -- the model: POSIX semantics of one subtree ------------------------------------------------


@dataclass
class Model:
    """path -> DIR or an inode number; inode number -> content. Hard links share an inode."""
    entries: dict[bytes, object] = field(default_factory=lambda: {b"": DIR})
    contents: dict[int, bytes] = field(default_factory=dict)
    next_inode: int = 0

    def state(self) -> dict[bytes, object]:
        """What another mount may see: kinds and contents (not which names share an inode)."""
        return {path: DIR if kind == DIR else self.contents[kind] for path, kind in self.entries.items() if path}

    def _parent_is_dir(self, path: bytes) -> bool:
        return self.entries.get(path.rpartition(b"/")[0]) == DIR

    def _children(self, path: bytes) -> list[bytes]:
        return [other for other in self.entries if other.startswith(path + b"/")]

    def apply(self, op: str, path: bytes, other: bytes, data: bytes, number: int) -> bool:
        """Apply an operation as POSIX would; False if it would be refused."""
        kind = self.entries.get(path)
        if op == "write":
            if kind == DIR or not self._parent_is_dir(path):
                return False
            if kind is None:
                kind = self.entries[path] = self.next_inode
                self.next_inode += 1
            self.contents[kind] = data
        elif op == "pwrite":
            if kind is None or kind == DIR:
                return False
            old = self.contents[kind]
            self.contents[kind] = old[:number].ljust(number, b"\0") + data + old[number + len(data):]
        elif op == "truncate":
            if kind is None or kind == DIR:
                return False
            self.contents[kind] = self.contents[kind][:number].ljust(number, b"\0")
        elif op == "unlink":
            if kind is None or kind == DIR:
                return False
            del self.entries[path]
        elif op == "mkdir":
            if kind is not None or not self._parent_is_dir(path):
                return False
            self.entries[path] = DIR
        elif op == "rmdir":
            if kind != DIR or self._children(path):
                return False
            del self.entries[path]
        elif op == "link":
            if kind is None or kind == DIR or other in self.entries or not self._parent_is_dir(other):
                return False
            self.entries[other] = kind
        elif op == "rename":
            return self._rename(path, other)
        return True

    def _rename(self, source: bytes, destination: bytes) -> bool:
        kind, replaced = self.entries.get(source), self.entries.get(destination)
        if kind is None or not self._parent_is_dir(destination):
            return False
        if source == destination or (replaced is not None and replaced == kind and kind != DIR):
            return True  # the same entry, or two names of one inode: nothing happens
        if destination.startswith(source + b"/"):
            return False
        if replaced is not None:
            if kind == DIR and (replaced != DIR or self._children(destination)):
                return False
            if kind != DIR and replaced == DIR:
                return False
        moved = [source] + self._children(source)
        if replaced is not None:
            del self.entries[destination]
        for old in moved:
            self.entries[destination + old[len(source):]] = self.entries.pop(old)
        return True


# -- mounts -------------------------------------------------------------------------------------


class Node:
    """One mount, its engine running in the test's nursery, and the requests a user would make."""

    def __init__(self, tmp_path, name: str, lake: Lake) -> None:
        self.tmp_path, self.name, self.lake = tmp_path, name, lake
        self.mount: Mount = mount_on(tmp_path, name, lake)
        self.scope: trio.CancelScope | None = None
        self.stopped = trio.Event()
        self.mtimes: dict[tuple[bytes, int], int] = {}  # (directory path, inode) -> mtime last seen

    @property
    def files(self):
        return self.mount.files

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.stopped = trio.Event()
        try:
            with trio.CancelScope() as self.scope:
                await self.mount.run_engine(task_status=task_status)
        finally:
            self.stopped.set()

    async def crash_and_restart(self, nursery: trio.Nursery) -> None:
        """kill -9: the tasks stop where they are, the journal's open transaction is lost, nothing
        is drained. Then what the daemon does at start: repair, seal what no handle holds, catch up."""
        assert self.scope is not None
        self.scope.cancel()
        await self.stopped.wait()
        self.mount.journal.db.rollback()
        self.mount.journal.db.close()
        self.mount.staging.close()
        self.mount = mount_on(self.tmp_path, self.name, self.lake)
        self.files.lifecycle.seal_unheld_versions()
        await nursery.start(self.run)
        await self.mount.following.refresh()

    def lookup(self, path: bytes) -> int:
        ino = ROOT
        for part in path.split(b"/") if path else []:
            ino = self.files.tree.lookup(ino, part).ino
        return ino

    def split(self, path: bytes) -> tuple[int, bytes]:
        parent, _, name = path.rpartition(b"/")
        return self.lookup(parent), name

    async def change(self, op: str, path: bytes, other: bytes, data: bytes, number: int) -> bool:
        """The operation through the file system; False if it refused."""
        files = self.files
        try:
            if op == "write":
                parent, name = self.split(path)
                try:
                    opened = await files.handles.open(files.tree.lookup(parent, name).ino, os.O_WRONLY | os.O_TRUNC)
                except FsError as error:
                    if error.errno != 2:
                        raise
                    opened, _ = files.handles.create(parent, name, 0o644, os.O_WRONLY, ME)
                await self._write_and_close(opened.fh, 0, data)
            elif op == "pwrite":
                opened = await files.handles.open(self.lookup(path), os.O_RDWR)
                await self._write_and_close(opened.fh, number, data)
            elif op == "truncate":
                ino = self.lookup(path)
                if files.tree.inode(ino).is_dir:
                    return False
                await files.setattr(ino, AttributeChanges(size=number), None)
            elif op == "unlink":
                files.tree.unlink(*self.split(path))
            elif op == "mkdir":
                files.tree.mkdir(*self.split(path), 0o755, ME)
            elif op == "rmdir":
                files.tree.rmdir(*self.split(path))
            elif op == "link":
                files.tree.link(self.lookup(path), *self.split(other))
            elif op == "rename":
                files.tree.rename(*self.split(path), *self.split(other))
        except FsError:
            return False
        return True

    async def _write_and_close(self, fh: int, offset: int, data: bytes) -> None:
        handles = self.files.handles
        try:
            if data:
                assert await handles.write(fh, offset, data) == len(data)
        finally:
            handles.flush(fh)
            handles.release(fh)

    async def read(self, ino: int) -> bytes:
        opened = await self.files.handles.open(ino, os.O_RDONLY)
        try:
            return await self.files.handles.read(opened.fh, 0, 1 << 30)
        finally:
            self.files.handles.release(opened.fh)

    async def view(self, top: bytes) -> dict[bytes, object] | None:
        """The subtree under `top` as this mount shows it (paths relative to it), None if absent;
        checks on the way that no directory's mtime went back."""
        try:
            start = self.lookup(top)
        except FsError:
            return None
        found: dict[bytes, object] = {}
        stack = [(b"", start)]
        while stack:
            prefix, directory = stack.pop()
            self._check_mtime(top + (b"/" + prefix.rstrip(b"/") if prefix else b""), directory)
            for name, ino in self.files.journal.children(directory):
                inode = self.files.tree.inode(ino)
                if inode.is_dir:
                    found[prefix + name] = DIR
                    stack.append((prefix + name + b"/", ino))
                else:
                    found[prefix + name] = await self.read(ino)
        return found

    def _check_mtime(self, path: bytes, ino: int) -> None:
        mtime = self.files.tree.attributes(ino).mtime_ns
        seen = self.mtimes.get((path, ino))
        assert seen is None or mtime >= seen, f"{self.name}: mtime of {path!r} went back from {seen} to {mtime}"
        self.mtimes[(path, ino)] = mtime

    def directory_times(self) -> dict[bytes, int]:
        found, stack = {b"": self.files.tree.attributes(ROOT).mtime_ns}, [(b"", ROOT)]
        while stack:
            prefix, directory = stack.pop()
            for name, ino in self.files.journal.children(directory):
                attributes = self.files.tree.attributes(ino)
                if self.files.tree.inode(ino).is_dir:
                    found[prefix + name] = attributes.mtime_ns
                    stack.append((prefix + name + b"/", ino))
        return found

    async def sync(self) -> None:
        await self.files.engine.wait_published(self.files.journal.outbox_tail())


# -- the test -----------------------------------------------------------------------------------

DATA = st.one_of(st.binary(min_size=0, max_size=48),
                 st.builds(lambda size, byte: bytes([byte]) * size, st.sampled_from([70_000, 150_000]),
                           st.integers(0, 255)))
FILE_OPS = ["write", "write", "pwrite", "truncate", "unlink", "mkdir", "rmdir", "link", "rename", "rename"]
STEP = st.one_of(
    st.tuples(st.just("change"), st.integers(0, MOUNTS - 1), st.sampled_from(FILE_OPS), st.sampled_from(NAMES),
              st.sampled_from(NAMES), DATA, st.integers(0, 80)),
    st.tuples(st.just("shared"), st.integers(0, MOUNTS - 1), st.sampled_from(["write", "unlink", "rename"]),
              st.sampled_from([b"a", b"b"]), st.sampled_from([b"a", b"b"]), st.binary(max_size=16), st.just(0)),
    st.tuples(st.sampled_from(["sync", "refresh", "crash"]), st.integers(0, MOUNTS - 1), st.just(""), st.just(b""),
              st.just(b""), st.just(b""), st.just(0)),
    st.tuples(st.just("fault"), st.integers(0, MOUNTS - 1), st.sampled_from(["packs/", "manifests/", "log/", ""]),
              st.just(b""), st.just(b""), st.just(b""), st.integers(1, 3)),
)


def new_lake() -> tuple[FaultyStore, Lake]:
    faulty = FaultyStore(MemoryStore())
    lake = Lake(RetryingStore(faulty, first_delay=0.0001, max_delay=0.001, give_up_after=3600))
    lake.open(create=True)
    return faulty, lake


@settings(max_examples=int(os.environ.get("CKPTFS_MODEL_EXAMPLES", "100")), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(steps=st.lists(STEP, min_size=1, max_size=30))
def test_mounts_show_what_the_model_allows(tmp_path_factory, steps):
    tmp_path = tmp_path_factory.mktemp("reference")
    faulty, lake = new_lake()
    models = [Model() for _ in range(MOUNTS)]
    histories: list[list[dict]] = [[{}] for _ in range(MOUNTS)]  # each mount's subtree after each change
    synced = [0] * MOUNTS  # the index in its history of each mount's last sync
    # floor[j][i]: the oldest of mount i's states mount j may show: i's last sync before j's last refresh
    floor = [[0] * MOUNTS for _ in range(MOUNTS)]

    async def main():
        nodes = [Node(tmp_path, f"m{index}", lake) for index in range(MOUNTS)]
        async with trio.open_nursery() as nursery:
            for index, node in enumerate(nodes):
                await nursery.start(node.run)
                node.files.tree.mkdir(ROOT, b"m%d" % index, 0o755, ME)
                await node.sync()
            nodes[0].files.tree.mkdir(ROOT, b"shared", 0o755, ME)
            await nodes[0].sync()
            for node in nodes:
                await node.mount.following.refresh()

            async def check(index: int) -> None:
                node = nodes[index]
                assert await node.view(b"m%d" % index) == models[index].state(), f"{node.name}'s own subtree"
                for other in range(MOUNTS):
                    if other != index:
                        seen = await node.view(b"m%d" % other)
                        allowed = histories[other][floor[index][other]:]
                        assert seen in allowed, f"{node.name} shows m{other} in a state it never published"

            for kind, index, op, path, other, data, number in steps:
                node = nodes[index]
                if kind == "change":
                    top = b"m%d/" % index
                    done = await node.change(op, top + path, top + other, data, number)
                    assert done == models[index].apply(op, path, other, data, number), (op, path, other)
                    if done:
                        histories[index].append(models[index].state())
                elif kind == "shared":
                    await node.change(op, b"shared/" + path, b"shared/" + other, data, number)
                elif kind == "sync":
                    remote, replay = node.files.remote, node.mount.replay
                    compared, own_before = remote.compared, replay.covered.get(node.name, -1)
                    newest_other = max((change.order for change in replay.events if change.mount != node.name),
                                       default=None)
                    await node.sync()
                    synced[index] = len(histories[index]) - 1
                    published_now = [change for change in replay.events
                                     if change.mount == node.name and change.seq > own_before]
                    # An own change that sorts before another mount's already replayed (it waited
                    # in the outbox) rightly makes the next comparison a full one.
                    late = newest_other is not None and any(change.order < newest_other for change in published_now)
                    if not remote._deferred and not late:
                        # What it just published is not compared with the lake's replay again.
                        remote.apply([])
                        node.files.commit()
                        assert remote.compared == compared, f"{node.name} compared its own changes"
                elif kind == "refresh":
                    remote = node.files.remote
                    # Nothing left waiting from an earlier refresh, and no full comparison due (an own
                    # change published late, after another mount's later one was replayed).
                    idle = not remote._deferred and not node.mount.replay.full_due
                    compared = remote.compared
                    if (await node.mount.following.refresh())["events"] == 0 and idle:
                        # Following costs what other mounts publish: nothing new, nothing compared
                        # (this mount's own published changes included).
                        assert remote.compared == compared, f"{node.name} compared its tree for nothing"
                    floor[index] = list(synced)
                elif kind == "crash":
                    await node.crash_and_restart(nursery)  # it catches up before it serves
                    floor[index] = list(synced)
                else:
                    faulty.fail("put", op, kind="temporary", times=number)
                await check(index)

            for _ in range(2):  # a second round: every mount has seen every other's last events
                for node in nodes:
                    await node.sync()
                for node in nodes:
                    await node.mount.following.refresh()
            expected = lake_tree(lake)
            times = nodes[0].directory_times()
            for node in nodes:
                assert journal_tree(node.files) == expected, node.name
                for other in range(MOUNTS):
                    assert await node.view(b"m%d" % other) == models[other].state()
                assert node.directory_times() == times, f"{node.name}'s directory times"
            fresh = Node(tmp_path, "fresh", lake)
            assert journal_tree(fresh.files) == expected
            assert fresh.directory_times() == times, "a mount started from the lake"
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
