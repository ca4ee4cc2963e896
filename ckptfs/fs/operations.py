"""The pyfuse3 adapter: FUSE requests in, journal/staging/engine calls out, errno at the boundary.

What it must never do: wait for the network on the write path, or let an exception other than
FUSEError escape into pyfuse3 (every handler is wrapped; unexpected errors are logged and become EIO).

File versions: a file's content is its inode's current version. Writes go into that version's staging
file while it is OPEN; the first write or truncate after a version is sealed starts a new version as a
copy (copy-on-write), so a sealed version never changes. flush() (close) of a handle that wrote seals
the version, records it in the path's history and queues its `put` event: nothing more on close.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import json
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyfuse3
import trio

from ckptfs.cache.journal import COMMITTED, OPEN, ROOT_INODE, SEALED, STATE_NAMES, Inode, Journal
from ckptfs.cache.staging import Staging
from ckptfs.engine.evictor import Evictor
from ckptfs.engine.fetcher import Fetcher
from ckptfs.engine.spill import Spill, spill_threshold
from ckptfs.engine.uploader import Uploader
from ckptfs.errors import CkptfsError
from ckptfs.fs import versions
from ckptfs.lake import namespace

log = logging.getLogger(__name__)
XATTR_STATE = b"user.ckptfs.state"
XATTR_STATUS = b"user.ckptfs.status"
XATTR_BARRIER = b"user.ckptfs.barrier"
XATTR_NO_DRAIN = b"user.ckptfs.no_drain"
NAME_MAX = 255
ATTR_TIMEOUT = 1.0


def _translate_errors(method):
    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except CkptfsError as error:
            log.error("%s: %s", method.__name__, error)
            raise pyfuse3.FUSEError(error.errno) from None
        except OSError as error:
            if error.errno == errno.ENOSPC:
                log.warning("%s: %s", method.__name__, error.strerror or error)
                raise pyfuse3.FUSEError(errno.ENOSPC) from None
            log.exception("%s failed", method.__name__)
            raise pyfuse3.FUSEError(error.errno or errno.EIO) from None
        except sqlite3.OperationalError as error:
            if "full" in str(error):  # the journal could not grow: the cache disk is full
                log.warning("%s: journal: %s", method.__name__, error)
                raise pyfuse3.FUSEError(errno.ENOSPC) from None
            log.exception("%s failed unexpectedly", method.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s failed unexpectedly", method.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


def _bypass_page_cache(flags: int, others_open: int) -> bool:
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


_SPECIAL_KINDS = {stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "char", stat.S_IFBLK: "block"}


def _fail(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class ChangesInFlight:
    """The changes (WRITE, a SETATTR of the size) each file has received and not yet applied, so that
    a READ waits for the changes that arrived before it.

    The kernel's write-through copies a write's bytes into its page cache and unlocks the page
    before the WRITE is answered; if the page is dropped meanwhile (an attribute change invalidates
    the cache), a mapping's fault READs it again. Served from the version as it was before the
    WRITE applied (the WRITE may be waiting for a copy-on-write), the page would come back stale,
    and the mapping's write-back would then write the stale bytes over the WRITE's. Measured with
    scripts/stress_concurrent_writes.py, 5 seeds of 200 trials: 5 lost pages without this wait, none with it.
    """

    def __init__(self) -> None:
        self._next = 0
        self._pending: dict[int, set[int]] = {}  # inode -> tickets of changes not yet applied
        self._applied: dict[int, trio.Event] = {}  # inode -> set when one of them is applied

    @contextlib.contextmanager
    def change(self, ino: int) -> Iterator[None]:
        """Around a change's whole handler: entered before its first await."""
        self._next += 1
        ticket = self._next
        self._pending.setdefault(ino, set()).add(ticket)
        try:
            yield
        finally:
            pending = self._pending[ino]
            pending.discard(ticket)
            if not pending:
                del self._pending[ino]
            event = self._applied.pop(ino, None)
            if event is not None:
                event.set()

    async def wait_for_earlier(self, ino: int) -> None:
        """Return once every change the file received before this call is applied."""
        last = self._next
        while (pending := self._pending.get(ino)) and min(pending) <= last:
            event = self._applied.get(ino)
            if event is None:
                event = self._applied[ino] = trio.Event()
            await event.wait()


@dataclass
class Handle:
    ino: int
    writable: bool
    fixed_version: int | None = None  # set for read-only handles on .versions files
    dirty: bool = False    # wrote since the last seal: flush() seals
    touched: bool = False  # created or truncated at open: release() seals if nothing else did
    next_offset: int = 0


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, journal: Journal, staging: Staging, uploader: Uploader, fetcher: Fetcher, *,
                 mount_id: str, durability: str = "local", evictor: Evictor | None = None,
                 spill: Spill | None = None) -> None:
        super().__init__()
        self.journal = journal
        self.staging = staging
        self.uploader = uploader
        self.fetcher = fetcher
        self.mount_id = mount_id
        self.durability = durability
        self.evictor = evictor
        self.spill = spill
        self._spill_at = spill_threshold(evictor.limit_bytes) if evictor is not None else 0
        self.backpressure_waits = 0
        self.backpressure_seconds = 0.0
        self.view = versions.VersionsView(journal)
        self.handles: dict[int, Handle] = {}
        self._listings: dict[int, list[tuple[bytes, int]]] = {}
        self._cached_version: dict[int, int | None] = {}  # inode -> version its page cache holds
        self._next_handle = 1
        self.lookups: dict[int, int] = {}
        self.open_count: dict[int, int] = {}
        self._dirty_inodes: set[int] = set()
        self._preparing: dict[int, trio.Event] = {}  # inode -> set once its new version is ready
        self._changes = ChangesInFlight()
        self._last_event_ns = 0
        self.no_drain = False
        for name in dir(self):
            attribute = getattr(type(self), name, None)
            if inspect.iscoroutinefunction(attribute) and not name.startswith("_") and name != "forget":
                setattr(self, name, _translate_errors(getattr(self, name)))

    # -- helpers ------------------------------------------------------------------------------
    def _event_time(self) -> int:
        """Event times strictly increase within a mount: they order this mount's log."""
        self._last_event_ns = max(time.time_ns(), self._last_event_ns + 1)
        return self._last_event_ns

    def _inode(self, ino: int) -> Inode:
        inode = self.journal.inode(ino)
        if inode is None:
            raise _fail(errno.ENOENT)
        return inode

    def _attributes(self, inode: Inode) -> pyfuse3.EntryAttributes:
        attributes = pyfuse3.EntryAttributes()
        attributes.st_ino = inode.ino
        attributes.st_mode = inode.mode
        attributes.st_nlink = 2 + self.journal.subdirectory_count(inode.ino) if inode.is_dir \
            else self.journal.link_count(inode.ino)
        attributes.st_rdev = inode.rdev
        attributes.st_uid = inode.uid
        attributes.st_gid = inode.gid
        attributes.st_size = inode.size
        attributes.st_blksize = 1 << 20
        attributes.st_blocks = (inode.size + 511) // 512
        attributes.st_atime_ns = inode.atime_ns
        attributes.st_mtime_ns = inode.mtime_ns
        attributes.st_ctime_ns = inode.ctime_ns
        attributes.entry_timeout = ATTR_TIMEOUT
        attributes.attr_timeout = ATTR_TIMEOUT
        return attributes

    def _virtual_attributes(self, ino: int) -> pyfuse3.EntryAttributes:
        node = self.view.node(ino)
        if node is None:
            raise _fail(errno.ENOENT)
        attributes = pyfuse3.EntryAttributes()
        attributes.st_ino = ino
        root = self.journal.inode(ROOT_INODE)
        attributes.st_uid, attributes.st_gid = root.uid, root.gid
        if node.version is None:
            attributes.st_mode = stat.S_IFDIR | 0o555
            attributes.st_nlink = 2
            attributes.st_mtime_ns = attributes.st_ctime_ns = attributes.st_atime_ns = root.mtime_ns
        else:
            version = self.journal.version(node.version)
            attributes.st_mode = stat.S_IFREG | 0o444
            attributes.st_nlink = 1
            attributes.st_size = version.size if version else 0
            attributes.st_blocks = (attributes.st_size + 511) // 512
            attributes.st_mtime_ns = attributes.st_ctime_ns = attributes.st_atime_ns = node.time_ns
        attributes.st_blksize = 1 << 20
        attributes.entry_timeout = ATTR_TIMEOUT
        attributes.attr_timeout = ATTR_TIMEOUT
        return attributes

    def _attributes_of(self, ino: int) -> pyfuse3.EntryAttributes:
        if versions.is_virtual(ino):
            return self._virtual_attributes(ino)
        return self._attributes(self._inode(ino))

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise _fail(errno.ENAMETOOLONG)
        if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
            raise _fail(errno.EINVAL)

    def _check_writable_parent(self, parent: int, name: bytes) -> Inode:
        if versions.is_virtual(parent):
            raise _fail(errno.EROFS)
        self._check_name(name)
        if parent == ROOT_INODE and name == versions.NAME:
            raise _fail(errno.EEXIST)
        inode = self._inode(parent)
        if not inode.is_dir:
            raise _fail(errno.ENOTDIR)
        return inode

    def _path(self, parent: int, name: bytes) -> bytes:
        base = self.journal.path_of(parent)
        if base is None:
            raise _fail(errno.ENOENT)
        return base + b"/" + name if base else name

    def _touch_dir(self, inode: Inode) -> None:
        inode.mtime_ns = inode.ctime_ns = time.time_ns()
        self.journal.save_inode(inode)

    def _remember_lookup(self, ino: int) -> None:
        self.lookups[ino] = self.lookups.get(ino, 0) + 1

    def _maybe_delete_inode(self, ino: int) -> None:
        """Drop an inode that no entry names, the kernel no longer knows and nobody has open."""
        if ino == ROOT_INODE or self.lookups.get(ino, 0) > 0 or self.open_count.get(ino, 0) > 0:
            return
        self._cached_version.pop(ino, None)
        if self.journal.parent_of(ino) is not None:
            return
        inode = self.journal.inode(ino)
        if inode is None:
            return
        if inode.version is not None:
            version = self.journal.version(inode.version)
            if version is not None and version.state == OPEN:
                self.staging.remove(version.id)
                self.journal.delete_version(version.id)
        self.journal.delete_inode(ino)

    def _flush_dirty_inodes(self) -> None:
        for ino in self._dirty_inodes:
            inode = self.journal.inode(ino)
            if inode is not None:
                self.journal.save_inode(inode)
        self._dirty_inodes.clear()

    def commit(self, *, durable: bool = False) -> None:
        self._flush_dirty_inodes()
        self.journal.commit(durable=durable)

    # -- file versions ------------------------------------------------------------------------
    async def _writable_version(self, inode: Inode, offset: int | None, *, empty: bool = False) -> int:
        """The file's OPEN version, ready for a change at `offset` (None: no restore of a spilled prefix
        is needed, as for truncation to zero). Starts a new version if the current one is sealed.

        The kernel sends WRITEs concurrently (a mapping's write-back, threads, other processes), and
        every await here lets other handlers run. So the caller must change the version it gets back
        before its next await, and only this method starts versions: while one is being prepared
        (copy of the sealed content, refill of a spilled prefix) every other change to the file waits
        for it and then looks again, instead of starting a copy of its own.
        """
        while True:
            preparing = self._preparing.get(inode.ino)
            if preparing is not None:
                await preparing.wait()
                continue
            current = self.journal.version(inode.version) if inode.version is not None else None
            if current is None or current.state != OPEN:
                await self._start_version(inode, current, empty=empty)
                continue
            if offset is not None and await self.uploader.prefix.before_change(current.id, offset):
                continue  # it awaited: the version may have been sealed meanwhile
            return current.id

    async def _start_version(self, inode: Inode, current, *, empty: bool) -> None:
        """Start a new OPEN version of a file as a copy of `current` (or empty) and make it current.

        `empty`: the caller truncates it to 0 at once (O_TRUNC), so a new version starts empty rather
        than as a copy of content about to be thrown away.
        """
        done = self._preparing[inode.ino] = trio.Event()
        identifier = self.journal.new_version(inode.ino, mode=inode.mode & 0o7777)
        try:
            if current is None or empty:
                self.staging.create(identifier)
            elif current.staged and self.staging.exists(current.id) and not (current.hole_end and current.manifest):
                self.staging.pinned.add(current.id)
                try:
                    await trio.to_thread.run_sync(self.staging.create, identifier, current.id)
                    if current.hole_end and self.spill is not None:
                        await self.spill.fill(current, self.staging.fd(identifier))  # spilled, still uploading
                finally:
                    self.staging.pinned.discard(current.id)
            else:
                self.staging.create(identifier)
                await self.fetcher.read_all_into(current.manifest, self.staging.fd(identifier))
                self.staging.refresh_size(identifier)
            inode.version = identifier
            self.journal.save_inode(inode)
        except BaseException:
            self.staging.remove(identifier)  # a partial copy: the file keeps its current version
            self.journal.delete_version(identifier)
            raise
        finally:
            del self._preparing[inode.ino]
            done.set()

    def seal(self, inode: Inode) -> int | None:
        """Seal the file's OPEN version: it becomes immutable, part of history, queued for upload."""
        version = self.journal.version(inode.version) if inode.version is not None else None
        if version is None or version.state != OPEN:
            return None
        paths = self.journal.paths_of(inode.ino)
        if not paths:
            return None  # unlinked while open: nothing can name it; dropped with the inode
        when = self._event_time()
        size = self.staging.size(version.id)
        inode.size = size
        self.journal.save_inode(inode)
        self.journal.update_version(version.id, state=SEALED, size=size, mode=inode.mode & 0o7777,
                                    mtime_ns=inode.mtime_ns, path=paths[0], sealed_ns=when)
        for path in paths:  # hard links share the content: every name's history gets the version
            self.journal.add_history(path, when, version.id)
        self.journal.enqueue(namespace.event("put", paths[0], when, uid=inode.uid, gid=inode.gid,
                                             atime_ns=inode.atime_ns, node=self._node_id(inode)), version.id)
        self.commit()
        self.uploader.submit(version.id)
        return version.id

    def seal_unheld_versions(self) -> int:
        """Seal every OPEN version that no handle can write to any more (a mapping holds its handle
        open): left by a killed daemon, or by a close this mount missed. Versions that are not their
        file's content (unlinked, or a copy interrupted by a crash) are dropped, with a log line.
        Returns how many were sealed."""
        sealed = dropped = 0
        for version in self.journal.versions_in_state(OPEN):
            if version.ino is not None and (self.open_count.get(version.ino) or version.ino in self._preparing):
                continue
            inode = self.journal.inode(version.ino) if version.ino is not None else None
            if inode is not None and inode.version == version.id and self.seal(inode) is not None:
                log.info("sealed version %x of %r: open with no handle left", version.id,
                         self.journal.path_of(inode.ino))
                sealed += 1
                continue
            log.warning("dropping open version %x (%d bytes written): %s", version.id,
                        self.staging.sizes.get(version.id, 0),
                        "its file was unlinked" if inode is not None and inode.version == version.id
                        else "it is not its file's content (a copy interrupted by a crash)")
            self.staging.remove(version.id)
            self.journal.delete_version(version.id)
            dropped += 1
        if sealed or dropped:
            self.commit(durable=True)
        return sealed

    def _node_id(self, inode: Inode) -> str:
        """The inode's identity in the lake: kept across rebuilds, shared by its hard links."""
        return inode.node or f"{self.mount_id}.{inode.ino:x}"

    def _publish(self, op: str, path: bytes, **fields: Any) -> None:
        self.journal.enqueue(namespace.event(op, path, self._event_time(), **fields))
        self.uploader.poke()

    async def _read_version(self, version_id: int, offset: int, size: int, *, sequential: bool) -> bytes:
        version = self.journal.version(version_id)
        if version is None:
            raise _fail(errno.ENOENT)
        if version.staged and version.hole_end > offset and self.spill is not None:
            if version.manifest is None:  # spilled while written, not committed yet
                return await self.spill.read(version, offset, size, sequential=sequential)
        elif version.staged:
            if self.evictor is not None:
                self.evictor.touch(version_id)
            return os.pread(self.staging.fd(version_id), size, offset)
        if version.manifest is None:
            raise CkptfsError(f"version {version_id:x} has neither local data nor a manifest")
        return await self.fetcher.read(version.manifest, offset, size, sequential=sequential)

    # -- lookups and attributes ---------------------------------------------------------------
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if versions.is_virtual(parent_inode):
            if name == b".":
                ino = parent_inode
            else:
                ino = self.view.lookup(parent_inode, name)
            if ino is None:
                raise _fail(errno.ENOENT)
            return self._virtual_attributes(ino)
        if parent_inode == ROOT_INODE and name == versions.NAME:
            return self._virtual_attributes(versions.ROOT_VIRTUAL_INODE)
        if len(name) > NAME_MAX:
            raise _fail(errno.ENAMETOOLONG)
        if name == b".":
            ino = parent_inode
        elif name == b"..":
            link = self.journal.parent_of(parent_inode)
            ino = link[0] if link else ROOT_INODE
        else:
            ino = self.journal.lookup(parent_inode, name)
        if ino is None:
            raise _fail(errno.ENOENT)
        self._remember_lookup(ino)
        return self._attributes(self._inode(ino))

    async def forget(self, inode_list) -> None:
        for ino, count in inode_list:
            if versions.is_virtual(ino):
                continue
            remaining = self.lookups.get(ino, 0) - count
            if remaining > 0:
                self.lookups[ino] = remaining
            else:
                self.lookups.pop(ino, None)
                try:
                    self._maybe_delete_inode(ino)
                except Exception:  # noqa: BLE001 - forget must not raise
                    log.exception("forget of inode %d failed", ino)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attributes_of(inode)

    async def setattr(self, inode: int, attr, fields, fh, ctx) -> pyfuse3.EntryAttributes:
        if versions.is_virtual(inode):
            raise _fail(errno.EROFS)
        node = self._inode(inode)
        now = time.time_ns()
        changed_metadata = False
        if fields.update_size:
            if not node.is_file:
                raise _fail(errno.EISDIR if node.is_dir else errno.EINVAL)
            with self._changes.change(node.ino):
                version = await self._writable_version(node, attr.st_size or None, empty=attr.st_size == 0)
                self.staging.truncate(version, attr.st_size)
            node.size = attr.st_size
            node.mtime_ns = now
            if fh is not None and fh in self.handles:
                self.handles[fh].dirty = True
            elif not any(h.ino == inode and h.writable for h in self.handles.values()):
                self.seal(node)  # truncate(2) on a path: a complete new version by itself
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
            changed_metadata = True
        if fields.update_uid:
            node.uid = attr.st_uid
            changed_metadata = True
        if fields.update_gid:
            node.gid = attr.st_gid
            changed_metadata = True
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
            changed_metadata = True
        if fields.update_atime:
            node.atime_ns = attr.st_atime_ns
            changed_metadata = True
        node.ctime_ns = now
        self.journal.save_inode(node)
        if changed_metadata:
            current = self.journal.version(node.version) if node.version is not None else None
            if current is None or current.state != OPEN:  # an open version carries its own attributes
                path = self.journal.path_of(inode)
                if path:
                    self._publish("attr", path, mode=stat.S_IMODE(node.mode), mtime_ns=node.mtime_ns,
                                  atime_ns=node.atime_ns, uid=node.uid, gid=node.gid)
        self.commit()
        return self._attributes(node)

    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        node = self._inode(inode)
        if not node.is_symlink:
            raise _fail(errno.EINVAL)
        return node.target or b""

    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        disk = os.statvfs(self.staging.directory)
        result = pyfuse3.StatvfsData()
        result.f_bsize = disk.f_bsize
        result.f_frsize = disk.f_frsize
        result.f_blocks = disk.f_blocks
        result.f_bfree = disk.f_bfree
        result.f_bavail = disk.f_bavail
        result.f_files = 1 << 40
        result.f_ffree = result.f_favail = 1 << 39
        result.f_namemax = NAME_MAX
        return result

    # -- directories --------------------------------------------------------------------------
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        if versions.is_virtual(inode):
            entries = self.view.children(inode)
        else:
            if not self._inode(inode).is_dir:
                raise _fail(errno.ENOTDIR)
            link = self.journal.parent_of(inode)
            entries = [(b".", inode), (b"..", link[0] if link else ROOT_INODE)] + self.journal.children(inode)
        handle = self._next_handle
        self._next_handle += 1
        self._listings[handle] = entries
        return handle

    async def readdir(self, fh: int, start_id: int, token) -> None:
        entries = self._listings.get(fh, [])
        for index in range(start_id, len(entries)):
            name, ino = entries[index]
            try:
                attributes = self._attributes_of(ino)
            except pyfuse3.FUSEError:
                continue  # removed since opendir
            if not pyfuse3.readdir_reply(token, name, attributes, index + 1):
                return
            if not versions.is_virtual(ino) and name not in (b".", b".."):  # the kernel counts no lookup for these
                self._remember_lookup(ino)

    async def releasedir(self, fh: int) -> None:
        self._listings.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.commit(durable=True)

    def _new_inode(self, parent: Inode, kind: int, mode: int, ctx, **fields: Any) -> Inode:
        """An inode for a new entry of `parent`, owned by the caller; in a set-group-id directory the
        group is the directory's, and a new directory is set-group-id too (as on Linux file systems)."""
        gid = ctx.gid
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if kind == stat.S_IFDIR:
                mode |= stat.S_ISGID
        return self.journal.create_inode(kind | (mode & 0o7777), ctx.uid, gid, **fields)

    def _add_entry(self, parent: Inode, name: bytes, inode: Inode) -> bytes:
        """Link a new inode into `parent`; returns its path."""
        self.journal.add_dirent(parent.ino, name, inode.ino)
        self._touch_dir(parent)
        self._remember_lookup(inode.ino)
        return self._path(parent.ino, name)

    def _check_absent(self, parent_inode: int, name: bytes) -> Inode:
        parent = self._check_writable_parent(parent_inode, name)
        if self.journal.lookup(parent_inode, name) is not None:
            raise _fail(errno.EEXIST)
        return parent

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx) -> pyfuse3.EntryAttributes:
        parent = self._check_absent(parent_inode, name)
        inode = self._new_inode(parent, stat.S_IFDIR, mode & ~ctx.umask, ctx)
        path = self._add_entry(parent, name, inode)
        self._publish("mkdir", path, mode=stat.S_IMODE(inode.mode), uid=inode.uid, gid=inode.gid,
                      mtime_ns=inode.mtime_ns)
        self.commit()
        return self._attributes(inode)

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx) -> pyfuse3.EntryAttributes:
        """FIFOs, UNIX sockets (bind(2) creates one) and device nodes are kept in the lake like any
        entry; the mount is always nodev, so a device node opens nothing. A regular file made with
        mknod(2) is an empty file with its first version sealed."""
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFREG:
            info, attributes = await self.create(parent_inode, name, mode, os.O_WRONLY | os.O_CREAT, ctx)
            await self.release(info.fh)
            return attributes
        if kind not in _SPECIAL_KINDS:
            raise _fail(errno.EINVAL)
        parent = self._check_absent(parent_inode, name)
        inode = self._new_inode(parent, kind, stat.S_IMODE(mode) & ~ctx.umask, ctx,
                                rdev=rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0)
        path = self._add_entry(parent, name, inode)
        self._publish("mknod", path, kind=_SPECIAL_KINDS[kind], mode=stat.S_IMODE(inode.mode), rdev=inode.rdev,
                      uid=inode.uid, gid=inode.gid, mtime_ns=inode.mtime_ns, node=self._node_id(inode))
        self.commit()
        return self._attributes(inode)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        parent = self._check_writable_parent(parent_inode, name)
        ino = self.journal.lookup(parent_inode, name)
        if ino is None:
            raise _fail(errno.ENOENT)
        if not self._inode(ino).is_dir:
            raise _fail(errno.ENOTDIR)
        if self.journal.has_children(ino):
            raise _fail(errno.ENOTEMPTY)
        path = self._path(parent_inode, name)
        self.journal.remove_dirent(parent_inode, name)
        self._touch_dir(parent)
        self._publish("rmdir", path)
        self._maybe_delete_inode(ino)
        self.commit()

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx) -> pyfuse3.EntryAttributes:
        parent = self._check_absent(parent_inode, name)
        inode = self._new_inode(parent, stat.S_IFLNK, 0o777, ctx, target=target)
        path = self._add_entry(parent, name, inode)
        self._publish("symlink", path, target=target, uid=inode.uid, gid=inode.gid, mtime_ns=inode.mtime_ns)
        self.commit()
        return self._attributes(inode)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx) -> pyfuse3.EntryAttributes:
        """A hard link: one more name for the inode. In the lake both names share the inode's
        identity, and each version of the file goes into the history of every name it has then
        (docs/FORMAT.md)."""
        if versions.is_virtual(inode):
            raise _fail(errno.EROFS)
        parent = self._check_absent(new_parent_inode, new_name)
        node = self._inode(inode)
        if node.is_dir:
            raise _fail(errno.EPERM)
        source = self.journal.path_of(inode)
        if source is None:
            raise _fail(errno.ENOENT)  # unlinked while open: linkat(2) of such a file answers ENOENT
        path = self._add_entry(parent, new_name, node)
        node.ctime_ns = time.time_ns()
        self.journal.save_inode(node)
        when = self._event_time()
        current = self.journal.version(node.version) if node.is_file and node.version is not None else None
        if current is not None and current.state != OPEN:
            self.journal.add_history(path, when, current.id)
        self.journal.enqueue(namespace.event("link", source, when, dst=path, node=self._node_id(node),
                                             uid=node.uid, gid=node.gid))
        self.uploader.poke()
        self.commit()
        return self._attributes(node)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        parent = self._check_writable_parent(parent_inode, name)
        ino = self.journal.lookup(parent_inode, name)
        if ino is None:
            raise _fail(errno.ENOENT)
        node = self._inode(ino)
        if node.is_dir:
            raise _fail(errno.EISDIR)
        path = self._path(parent_inode, name)
        if node.is_file and self.journal.history(path):
            self.journal.add_history(path, self._event_time(), None)
        self.journal.remove_dirent(parent_inode, name)
        self._touch_dir(parent)
        node.ctime_ns = time.time_ns()  # its link count changed
        self.journal.save_inode(node)
        self._publish("unlink", path)
        self._maybe_delete_inode(ino)
        self.commit()

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: Any = None) -> None:
        old_parent = self._check_writable_parent(parent_inode_old, name_old)
        new_parent = self._check_writable_parent(parent_inode_new, name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise _fail(errno.EINVAL)  # not supported: docs/SEMANTICS.md
        ino = self.journal.lookup(parent_inode_old, name_old)
        if ino is None:
            raise _fail(errno.ENOENT)
        moved = self._inode(ino)
        replaced = self.journal.lookup(parent_inode_new, name_new)
        if replaced == ino:
            return
        if replaced is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise _fail(errno.EEXIST)
            target = self._inode(replaced)
            if target.is_dir:
                if not moved.is_dir:
                    raise _fail(errno.EISDIR)
                if self.journal.has_children(replaced):
                    raise _fail(errno.ENOTEMPTY)
            elif moved.is_dir:
                raise _fail(errno.ENOTDIR)
        if moved.is_dir:
            ancestor = parent_inode_new
            while ancestor != ROOT_INODE:
                if ancestor == ino:
                    raise _fail(errno.EINVAL)
                link = self.journal.parent_of(ancestor)
                ancestor = link[0] if link else ROOT_INODE
        source = self._path(parent_inode_old, name_old)
        destination = self._path(parent_inode_new, name_new)
        when = self._event_time()
        if replaced is not None:
            if self._inode(replaced).is_file and self.journal.history(destination):
                self.journal.add_history(destination, when, None)
            self.journal.remove_dirent(parent_inode_new, name_new)
        # History follows the content: each file under the source gets a state at its new path.
        files = [(b"", ino)] if not moved.is_dir else [(b"/" + p, i) for p, i in self.journal.walk_files(ino)]
        for suffix, _ in files:
            states = self.journal.history(source + suffix)
            if states and states[-1][1] is not None:
                self.journal.add_history(destination + suffix, when, states[-1][1])
                self.journal.add_history(source + suffix, when, None)
        self.journal.move_dirent(parent_inode_old, name_old, parent_inode_new, name_new)
        self._touch_dir(old_parent)
        self._touch_dir(new_parent)
        moved.ctime_ns = time.time_ns()
        self.journal.save_inode(moved)
        if replaced is not None and self.journal.link_count(replaced):
            self._inode(replaced).ctime_ns = moved.ctime_ns  # a hard link of it is left
            self.journal.save_inode(self._inode(replaced))
        self.journal.enqueue(namespace.event("rename", source, when, dst=destination))
        self.uploader.poke()
        if replaced is not None:
            self._maybe_delete_inode(replaced)
        self.commit()

    # -- files --------------------------------------------------------------------------------
    def _new_handle(self, handle: Handle) -> int:
        number = self._next_handle
        self._next_handle += 1
        self.handles[number] = handle
        self.open_count[handle.ino] = self.open_count.get(handle.ino, 0) + 1
        return number

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx):
        parent = self._check_absent(parent_inode, name)
        inode = self._new_inode(parent, stat.S_IFREG, mode & ~ctx.umask, ctx)
        version = self.journal.new_version(inode.ino, mode=stat.S_IMODE(inode.mode))
        self.staging.create(version)
        inode.version = version
        self.journal.save_inode(inode)
        self._add_entry(parent, name, inode)
        handle = self._new_handle(Handle(inode.ino, True, touched=True))
        direct = _bypass_page_cache(flags | os.O_CREAT, 0)  # a new inode: nobody else has it open
        return pyfuse3.FileInfo(fh=handle, direct_io=direct), self._attributes(inode)

    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        writable = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        if versions.is_virtual(inode):
            node = self.view.node(inode)
            if node is None or node.version is None:
                raise _fail(errno.EISDIR if node else errno.ENOENT)
            if writable or flags & os.O_TRUNC:
                raise _fail(errno.EROFS)
            return pyfuse3.FileInfo(fh=self._new_handle(Handle(inode, False, fixed_version=node.version)),
                                    keep_cache=True)
        node = self._inode(inode)
        if node.is_dir:
            raise _fail(errno.EISDIR)
        handle = Handle(inode, writable)
        direct = _bypass_page_cache(flags, self.open_count.get(inode, 0))
        number = self._new_handle(handle)
        # Keep the kernel's page cache across opens while the content has not changed: every change
        # goes through this mount, so the cached pages are the current version's (warm restores).
        keep_cache = node.version is not None and self._cached_version.get(inode) == node.version
        self._cached_version[inode] = node.version
        if writable and flags & os.O_TRUNC:
            version = await self._writable_version(node, None, empty=True)
            self.staging.truncate(version, 0)
            node.size = 0
            node.mtime_ns = node.ctime_ns = time.time_ns()
            handle.touched = True
        return pyfuse3.FileInfo(fh=number, keep_cache=keep_cache, direct_io=direct)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self.handles.get(fh)
        if handle is None:
            raise _fail(errno.EBADF)
        sequential = off == handle.next_offset
        handle.next_offset = off + size
        if handle.fixed_version is not None:
            return await self._read_version(handle.fixed_version, off, size, sequential=sequential)
        await self._changes.wait_for_earlier(handle.ino)
        node = self._inode(handle.ino)
        if node.version is None or off >= node.size:
            return b""
        return await self._read_version(node.version, off, min(size, node.size - off), sequential=sequential)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.handles.get(fh)
        if handle is None or not handle.writable:
            raise _fail(errno.EBADF)
        node = self._inode(handle.ino)
        with self._changes.change(node.ino):
            if self.evictor is not None and self.staging.total_bytes + len(buf) > self._spill_at:
                await self._make_room(len(buf))
            version = await self._writable_version(node, off)
            written = self.staging.write(version, buf, off)
        end = off + written
        if end > node.size:
            node.size = end
        node.mtime_ns = node.ctime_ns = time.time_ns()
        handle.dirty = True
        self._dirty_inodes.add(node.ino)
        return written

    async def _make_room(self, needed: int) -> None:
        """Backpressure: evict clean data, spill files being written (engine/spill.py), then wait for
        uploads to make more data clean or spilled.

        Never fails the write: if only dirty data that no upload will clean or spill is left (files
        written out of order, or rewritten below their spilled prefix), the write goes ahead over
        budget rather than deadlock.
        """
        started = None
        while True:
            # Clean data goes first: the file being written is the one most likely read next.
            self.evictor.evict(self._spill_at - needed)
            wanted = self.staging.total_bytes + needed
            if wanted <= self._spill_at:
                break
            spilling = self.uploader.prefix.relieve()
            if wanted <= self.evictor.limit_bytes or not (spilling or self.uploader.busy()):
                break
            if started is None:
                started = time.monotonic()
                self.backpressure_waits += 1
            with trio.move_on_after(1):
                await self.uploader.wait_for_progress()
        if started is not None:
            self.backpressure_seconds += time.monotonic() - started

    async def flush(self, fh: int) -> None:
        handle = self.handles.get(fh)
        if handle is None or not handle.dirty:
            return
        handle.dirty = False
        self.seal(self._inode(handle.ino))

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        # A shell's `> file` opens, dup2()s and closes the first descriptor before writing: sealing
        # on that flush would add an empty version. Creation and O_TRUNC therefore seal here, at the
        # last close, unless a write already did and nobody else is writing.
        if handle.dirty or handle.touched:
            node = self.journal.inode(handle.ino)
            others = any(h.ino == handle.ino and h.dirty for h in self.handles.values())
            if node is not None and not others:
                self.seal(node)
        remaining = self.open_count.get(handle.ino, 1) - 1
        if remaining > 0:
            self.open_count[handle.ino] = remaining
        else:
            self.open_count.pop(handle.ino, None)
            if not versions.is_virtual(handle.ino):
                self._maybe_delete_inode(handle.ino)
        self.commit()

    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self.handles.get(fh)
        if handle is None or handle.fixed_version is not None:
            return
        node = self._inode(handle.ino)
        if node.version is not None and self.journal.version(node.version).state == OPEN:
            await trio.to_thread.run_sync(self.staging.datasync, node.version)
        self.commit(durable=True)
        if self.durability == "remote" and node.version is not None:
            version = self.seal(node) or node.version
            handle.dirty = False
            await self.wait_version_published(version)

    async def wait_version_published(self, version: int) -> None:
        seq = self.journal.outbox_seq_of_version(version)
        if seq is not None:
            await self.uploader.wait_published(seq)

    # -- extended attributes: per-file state and the control interface of the CLI -------------
    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        if versions.is_virtual(inode):
            raise _fail(pyfuse3.ENOATTR)
        node = self._inode(inode)
        if name == XATTR_STATE:
            return self._state_of(node).encode()
        if name == XATTR_STATUS and inode == ROOT_INODE:
            return json.dumps(self.status()).encode()
        if name == XATTR_BARRIER:
            return json.dumps(self.barrier(inode)).encode()
        raise _fail(pyfuse3.ENOATTR)

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any = None) -> None:
        if inode == ROOT_INODE and name == XATTR_NO_DRAIN:
            self.no_drain = value.strip() in (b"1", b"true", b"yes")
            return
        raise _fail(errno.ENOTSUP)

    async def listxattr(self, inode: int, ctx: Any = None) -> list[bytes]:
        if versions.is_virtual(inode):
            return []
        node = self._inode(inode)
        names = [XATTR_STATE] if node.is_file else []
        if inode == ROOT_INODE:
            names.append(XATTR_STATUS)
        return names

    async def removexattr(self, inode: int, name: bytes, ctx: Any = None) -> None:
        raise _fail(pyfuse3.ENOATTR)

    def _state_of(self, node: Inode) -> str:
        if not node.is_file or node.version is None:
            return "committed pending_bytes=0" if not node.is_file else "dirty pending_bytes=0"
        version = self.journal.version(node.version)
        if version is None:
            return "unknown"
        if version.state == COMMITTED:
            published = self.journal.outbox_seq_of_version(version.id) is None
            return "committed pending_bytes=0" if published else "uploading pending_bytes=0"
        if version.state == SEALED:
            return f"uploading pending_bytes={self.uploader.pending_of(version)}"
        return f"{STATE_NAMES[OPEN]} pending_bytes={node.size}"

    def barrier(self, ino: int) -> dict[str, Any]:
        """What `ckptfs sync PATH` waits for: every event queued so far, and which files are still open."""
        still_open = []
        top = self._inode(ino)
        paths = [(b"", ino)] if not top.is_dir else list(self.journal.walk_files(ino))
        for path, file_ino in paths:
            node = self.journal.inode(file_ino)
            if node and node.version is not None:
                version = self.journal.version(node.version)
                if version and version.state == OPEN:
                    still_open.append(namespace.encode_path(path))
        return {"upto": self.journal.outbox_tail(), "open_files": still_open[:20], "open_count": len(still_open)}

    def _store_health(self) -> dict[str, Any]:
        store = self.uploader.lake.store
        retries = getattr(store, "retries", 0)
        last_error_time = getattr(store, "last_error_time", None)
        last_success_time = getattr(store, "last_success_time", None)
        retrying = bool(last_error_time and (last_success_time is None or last_error_time > last_success_time))
        return {"store_retries": retries, "store_retrying": retrying,
                "last_store_error": getattr(store, "last_error", None) if retrying else None}

    def status(self) -> dict[str, Any]:
        counters = self.journal.counters()
        sealed = self.journal.versions_in_state(SEALED)
        open_versions = self.journal.versions_in_state(OPEN)
        logical = counters.get("logical_bytes", 0)
        oldest = min((v.sealed_ns for v in sealed if v.sealed_ns), default=None)
        return {
            "pid": os.getpid(),
            "mount_id": self.mount_id,
            "dirty_files": len(open_versions),
            "dirty_bytes": sum(self.staging.sizes.get(v.id, 0) for v in open_versions),
            "dirty_uploaded_bytes": sum(self.uploader.prefix.early_bytes(v.id) for v in open_versions),
            "upload_while_writing_bytes": self.uploader.prefix.round_bytes,
            "staged_bytes": self.staging.total_bytes,
            "spilled_bytes": sum(self.staging.holes.values()),
            "peak_staged_bytes": self.staging.peak_bytes,
            "staging_limit_bytes": self.evictor.limit_bytes if self.evictor else None,
            "backpressure_waits": self.backpressure_waits,
            "backpressure_seconds": round(self.backpressure_seconds, 2),
            "uploading_files": len(sealed),
            "uploading_bytes": self.uploader.pending_bytes(sealed),
            "oldest_pending_age_s": round((time.time_ns() - oldest) / 1e9, 1) if oldest else 0,
            "events_pending": self.journal.outbox_length(),
            "outbox_head": self.uploader.outbox_head(),
            "committed_versions": counters.get("versions_committed", 0),
            "committed_bytes": logical,
            "new_chunk_bytes": counters.get("new_chunk_bytes", 0),
            "stored_bytes": counters.get("stored_bytes", 0),
            "dedup_ratio": round(logical / counters["new_chunk_bytes"], 2) if counters.get("new_chunk_bytes") else None,
            "compression_ratio": (round(counters["new_chunk_bytes"] / counters["stored_bytes"], 2)
                                  if counters.get("stored_bytes") else None),
            "last_error": self.uploader.last_error,
            **self._store_health(),
            "no_drain": self.no_drain,
        }
