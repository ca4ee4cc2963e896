"""A mount assembled on a lake in the test's tmp_path, without a kernel: the daemon's own assembly
(ckptfs/mount.py) on a cache dir of its own."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from ckptfs.cache.chunkcache import ChunkCache
from ckptfs.cache.journal import Journal
from ckptfs.cache.rebuild import prepare_journal
from ckptfs.cache.staging import Staging
from ckptfs.files import Caller, FileSystem
from ckptfs.lake import Lake
from ckptfs.mount import Mount, Settings, assemble


def mount_on(tmp_path, name: str, lake: Lake, *, staging_limit: int | None = None, snapshot_every: int = 1000,
             durability: str = "local", clock: Callable[[], int] = time.time_ns, gc_every_s: float = 0) -> Mount:
    """A mount with its cache dir `tmp_path/name` (rebuilt from the lake if new, repaired as after a
    crash if not), uploads at seal only, following on demand, and a staging budget if
    `staging_limit` is given. Start its engine in the test's nursery (`await
    nursery.start(mount.run_engine)`) as needed."""
    cache = tmp_path / name
    cache.mkdir(exist_ok=True)
    journal = Journal(str(cache / "journal.sqlite"))
    staging = Staging(str(cache / "staging"))
    listed_at_ns = time.time_ns()
    view = lake.read_log()  # what the daemon reads at start: a snapshot and the segments after it
    # What the daemon does: rebuild a new cache dir from the lake, repair an existing one.
    name, replayed = prepare_journal(journal, staging, lake, view, new_mount_id=name)
    settings = Settings(durability=durability, staging_budget=staging_limit, refresh_interval=0,
                        snapshot_segments=snapshot_every, clock=clock, gc_every_s=gc_every_s)
    mount = assemble(lake, journal, staging, ChunkCache(str(cache / "chunks"), 1 << 30),
                     mount_id=name, settings=settings)
    mount.files.remote.start_from(view.base, view.events, view.cursors, view.horizon_ns, replayed=replayed,
                                  base_covers=view.base_covers)
    mount.follower.start_from(view.cursors, listed_at_ns)
    lake.register_mount(name)
    return mount


ROOT = 1
ME = Caller(uid=os.getuid(), gid=os.getgid())


@asynccontextmanager
async def running(mount: Mount) -> AsyncIterator[trio.Nursery]:
    """The mount's engine running in a nursery of its own, cancelled on leaving."""
    async with trio.open_nursery() as nursery:
        await nursery.start(mount.run_engine)
        yield nursery
        nursery.cancel_scope.cancel()


async def save(files: FileSystem, name: bytes, data: bytes, block: int = 1 << 20) -> int:
    """Create `name` in the root (or truncate it), write `data` a block at a time, close it;
    returns its inode."""
    existing = files.journal.lookup(ROOT, name)
    if existing is None:
        opened, attributes = files.handles.create(ROOT, name, 0o644, os.O_WRONLY, ME)
    else:
        opened = await files.handles.open(existing, os.O_WRONLY | os.O_TRUNC)
        attributes = files.tree.lookup(ROOT, name)
    for offset in range(0, len(data), block):
        assert await files.handles.write(opened.fh, offset, data[offset:offset + block]) == len(
            data[offset:offset + block])
    files.handles.flush(opened.fh)
    files.handles.release(opened.fh)
    return attributes.ino


async def load(files: FileSystem, ino: int) -> bytes:
    opened = await files.handles.open(ino, os.O_RDONLY)
    try:
        return await files.handles.read(opened.fh, 0, 1 << 30)
    finally:
        files.handles.release(opened.fh)


async def published(files: FileSystem) -> None:
    """Everything queued so far is published in the lake."""
    await files.engine.wait_published(files.journal.outbox_tail())


def lake_tree(lake: Lake) -> dict[bytes, tuple[str, object]]:
    """path -> (kind, manifest or target) of every entry every segment of the log replays to
    (snapshots are not read)."""
    namespace = lake.read_namespace(use_snapshot=False)
    return {path: (entry.kind, entry.manifest if entry.kind == "file" else entry.target)
            for path, entry in namespace.entries.items() if path}


def journal_tree(files: FileSystem) -> dict[bytes, tuple[str, object]]:
    """path -> (kind, manifest or target) of every entry of a mount's tree, from its journal."""
    found: dict[bytes, tuple[str, object]] = {}
    stack = [(b"", ROOT)]
    while stack:
        prefix, directory = stack.pop()
        for name, ino in files.journal.children(directory):
            path = prefix + name
            inode = files.journal.inode(ino)
            if inode.is_dir:
                found[path] = ("dir", None)
                stack.append((path + b"/", ino))
            elif inode.is_symlink:
                found[path] = ("symlink", inode.target)
            else:
                version = files.journal.version(inode.version) if inode.version else None
                found[path] = ("file", version.manifest if version else None)
    return found
