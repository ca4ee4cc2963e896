"""Open files: create, open, read, write, truncate, flush (close), release and fsync.

A version is one `open … close` of a writer: flush() of a handle that wrote seals the version. A
file created or opened with O_TRUNC and never written is sealed at release instead: a shell's
`> file` dup2()s and closes the first descriptor before writing, and sealing on that flush would
add an empty version.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass

import trio

from ckptfs.cache.journal import COMMITTED, Journal
from ckptfs.cache.staging import Staging
from ckptfs.engine.interface import Engine
from ckptfs.files import history
from ckptfs.files.attributes import Attributes, Caller
from ckptfs.files.lifecycle import Lifecycle
from ckptfs.files.tree import Tree, fail

SEQUENTIAL_SLACK = 8 << 20


@dataclass
class Handle:
    ino: int
    writable: bool
    fixed_version: int | None = None  # set for read-only handles on .versions files
    dirty: bool = False    # wrote since the last seal: flush() seals
    touched: bool = False  # created or truncated at open: release() seals if nothing else did
    next_offset: int = 0


@dataclass
class Opened:
    """What open() and create() answer, besides the handle number: how the kernel should cache."""
    fh: int
    keep_cache: bool = False
    direct_io: bool = False


def bypass_page_cache(flags: int, others_open: int) -> bool:
    """Whether a handle bypasses the kernel's page cache (direct_io): one opened write-only that
    creates or truncates the file while nobody else has it open, as torch.save does. Nothing can
    read or mmap through it, and the written bytes would otherwise be copied into page cache that
    nobody reads, on top of the staging file's.

    Only then: a direct_io write is not coherent with a writable shared mapping of the same page
    (the mapping's write-back carries the page's other bytes as they were when it was read, and
    writes them over the direct write's), and every mapping holds an open handle. Measured with
    scripts/stress_concurrent_writes.py: pwrite on a direct_io handle beside a mapping of the
    neighbouring range lost the shared page in 32 of 200 trials.
    """
    return flags & os.O_ACCMODE == os.O_WRONLY and bool(flags & (os.O_TRUNC | os.O_CREAT)) and others_open == 0


class Handles:
    def __init__(self, journal: Journal, staging: Staging, engine: Engine, tree: Tree, lifecycle: Lifecycle,
                 *, durability: str = "local") -> None:
        self.journal = journal
        self.staging = staging
        self.engine = engine
        self.tree = tree
        self.lifecycle = lifecycle
        self.durability = durability
        self.table: dict[int, Handle] = {}
        self._next = 1

    def _new(self, handle: Handle) -> int:
        number = self._next
        self._next += 1
        self.table[number] = handle
        counts = self.lifecycle.open_count
        counts[handle.ino] = counts.get(handle.ino, 0) + 1
        return number

    def _get(self, fh: int) -> Handle:
        handle = self.table.get(fh)
        if handle is None:
            raise fail(errno.EBADF)
        return handle

    # -- opening ------------------------------------------------------------------------------
    def create(self, parent: int, name: bytes, mode: int, flags: int, caller: Caller) -> tuple[Opened, Attributes]:
        directory = self.tree.absent(parent, name)
        inode = self.tree.new_inode(directory, stat.S_IFREG, mode & ~caller.umask, caller)
        version = self.journal.new_version(inode.ino, mode=stat.S_IMODE(inode.mode))
        self.staging.create(version)
        inode.version = version
        self.journal.save_inode(inode)
        self.tree.add_entry(directory, name, inode)
        number = self._new(Handle(inode.ino, True, touched=True))
        direct = bypass_page_cache(flags | os.O_CREAT, 0)  # a new inode: nobody else has it open
        return Opened(number, direct_io=direct), self.tree.attributes(inode.ino)

    async def open(self, ino: int, flags: int) -> Opened:
        writable = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        if history.is_virtual(ino):
            node = self.tree.view.node(ino)
            if node is None or node.version is None:
                raise fail(errno.EISDIR if node else errno.ENOENT)
            if writable or flags & os.O_TRUNC:
                raise fail(errno.EROFS)
            self._hold(node.version, flags)
            return Opened(self._new(Handle(ino, False, fixed_version=node.version)), keep_cache=True)
        inode = self.tree.inode(ino)
        if inode.is_dir:
            raise fail(errno.EISDIR)
        handle = Handle(ino, writable)
        direct = bypass_page_cache(flags, self.lifecycle.open_count.get(ino, 0))
        number = self._new(handle)
        # Keep the kernel's page cache across opens while the content has not changed: every change
        # goes through this mount, so the cached pages are the current version's (warm restores).
        keep_cache = inode.version is not None and self.tree.page_cache_version.get(ino) == inode.version
        self.tree.page_cache_version[ino] = inode.version
        if not writable and inode.version is not None:
            self._hold(inode.version, flags)
        if writable and flags & os.O_TRUNC:
            version = await self.lifecycle.writable_version(inode, None, empty=True)
            self.lifecycle.truncate_staged(version, 0)
            inode.size = 0
            self.tree.touch(inode)
            handle.touched = True
        return Opened(number, keep_cache=keep_cache, direct_io=direct)

    def _hold(self, version_id: int, flags: int) -> None:
        """A read of a committed version (a job resuming from a checkpoint): GC keeps it a while.
        An open with O_NOATIME is a look, not a use (`ckptfs latest` reading DCP metadata, `tar
        --atime-preserve=system`): it holds nothing, or every look would keep a version 7 days."""
        if flags & os.O_NOATIME:
            return
        version = self.journal.version(version_id)
        if version is not None and version.manifest is not None:
            self.engine.read_opened(version.manifest)

    # -- data ---------------------------------------------------------------------------------
    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        handle = self._get(fh)
        # The kernel's read-ahead sends several READs at once, which can arrive out of order: a read
        # near where the last one ended still counts as sequential, or the fetcher's window would
        # start over (and fetch chunk by chunk) at every reordering.
        sequential = abs(offset - handle.next_offset) <= SEQUENTIAL_SLACK
        handle.next_offset = max(handle.next_offset, offset + size) if sequential else offset + size
        if handle.fixed_version is not None:
            return await self.lifecycle.read_version(handle.fixed_version, offset, size, sequential=sequential)
        await self.lifecycle.changes.wait_for_earlier(handle.ino)
        inode = self.tree.inode(handle.ino)
        if inode.version is None or offset >= inode.size:
            return b""
        return await self.lifecycle.read_version(inode.version, offset, min(size, inode.size - offset),
                                                 sequential=sequential)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self._get(fh)
        if not handle.writable:
            raise fail(errno.EBADF)
        inode = self.tree.inode(handle.ino)
        with self.lifecycle.changes.change(inode.ino):
            await self.engine.make_room(len(data), lambda: self.staging.total_bytes)
            version = await self.lifecycle.writable_version(inode, offset)
            written = self.lifecycle.write_staged(version, data, offset)
        inode.size = max(inode.size, offset + written)
        inode.mtime_ns = inode.ctime_ns = time.time_ns()
        handle.dirty = True
        self.tree.dirty_inodes.add(inode.ino)
        return written

    async def truncate(self, ino: int, size: int, fh: int | None) -> None:
        inode = self.tree.inode(ino)
        if not inode.is_file:
            raise fail(errno.EISDIR if inode.is_dir else errno.EINVAL)
        with self.lifecycle.changes.change(ino):
            version = await self.lifecycle.writable_version(inode, size or None, empty=size == 0)
            self.lifecycle.truncate_staged(version, size)
        inode.size = size
        self.tree.touch(inode)
        if fh is not None and fh in self.table:
            self.table[fh].dirty = True
        elif not any(h.ino == ino and h.writable for h in self.table.values()):
            self.lifecycle.seal(inode)  # truncate(2) on a path: a complete new version by itself

    # -- closing ------------------------------------------------------------------------------
    def flush(self, fh: int) -> None:
        handle = self.table.get(fh)
        if handle is None or not handle.dirty:
            return
        handle.dirty = False
        self.lifecycle.seal(self.tree.inode(handle.ino))

    def release(self, fh: int) -> None:
        handle = self.table.pop(fh, None)
        if handle is None:
            return
        if handle.dirty or handle.touched:
            inode = self.journal.inode(handle.ino)
            others = any(h.ino == handle.ino and h.dirty for h in self.table.values())
            if inode is not None and not others:
                self.lifecycle.seal(inode)
        counts = self.lifecycle.open_count
        remaining = counts.get(handle.ino, 1) - 1
        if remaining > 0:
            counts[handle.ino] = remaining
        else:
            counts.pop(handle.ino, None)
            if not history.is_virtual(handle.ino):
                self.tree.maybe_delete_inode(handle.ino)
        self.tree.commit()

    async def fsync(self, fh: int) -> None:
        handle = self.table.get(fh)
        if handle is None or handle.fixed_version is not None:
            return
        inode = self.tree.inode(handle.ino)
        current = self.lifecycle.current(inode)
        if current is not None and current.state != COMMITTED and current.staged:
            # A version sealed by an earlier close is still only on the cache disk: an fsync after
            # close (an O_RDONLY open and fsync, as some savers do) must reach its bytes too.
            newly_pinned = current.id not in self.staging.pinned  # not evicted under the datasync
            self.staging.pinned.add(current.id)
            try:
                await trio.to_thread.run_sync(self.staging.datasync, current.id)
            finally:
                if newly_pinned:
                    self.staging.pinned.discard(current.id)
            self.journal.mark_synced(current.id)
        self.tree.commit(durable=True)
        if self.durability == "remote" and inode.version is not None:
            version = self.lifecycle.seal(inode) or inode.version
            handle.dirty = False
            await self.wait_version_published(version)

    async def wait_version_published(self, version: int) -> None:
        seq = self.journal.outbox_seq_of_version(version)
        if seq is not None:
            await self.engine.wait_published(seq)
