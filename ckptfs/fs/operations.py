"""The pyfuse3 adapter: FUSE requests in, calls of the file system layer (`ckptfs/files`) out, errno at
the boundary. No storage logic lives here.

What it must never do: let an exception other than FUSEError escape into pyfuse3 (every handler is
wrapped: FsError becomes its errno silently, anything unexpected is logged and becomes EIO).
"""

from __future__ import annotations

import errno
import functools
import inspect
import json
import logging
import os
import sqlite3
import time
from typing import Any

import pyfuse3
import trio

from ckptfs.cache.journal import ROOT_INODE
from ckptfs.errors import CkptfsError, FsError
from ckptfs.files import history
from ckptfs.files.attributes import AttributeChanges, Attributes
from ckptfs.files.remote import Invalidations
from ckptfs.lake.events import NAME_MAX
from ckptfs.mount import Mount

log = logging.getLogger(__name__)
XATTR_STATE = b"user.ckptfs.state"
XATTR_STATUS = b"user.ckptfs.status"
XATTR_BARRIER = b"user.ckptfs.barrier"
XATTR_PROGRESS = b"user.ckptfs.progress"
XATTR_PROGRESS_AFTER = b"user.ckptfs.progress.after."  # + the outbox seq a `ckptfs sync` waits for
XATTR_NO_DRAIN = b"user.ckptfs.no_drain"
XATTR_REFRESH = b"user.ckptfs.refresh"
XATTR_SNAPSHOT = b"user.ckptfs.snapshot"
XATTR_PREFETCH = b"user.ckptfs.prefetch"
ATTR_TIMEOUT = 1.0
BLOCK_SIZE = 1 << 20


def _translate_errors(method):
    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except FsError as error:
            raise pyfuse3.FUSEError(error.errno) from None
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


def _forget_inode(ino: int) -> None:
    try:
        pyfuse3.invalidate_inode(ino)
    except OSError:
        pass  # the kernel does not know it: nothing to forget


def _entry(attributes: Attributes) -> pyfuse3.EntryAttributes:
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = attributes.ino
    entry.st_mode = attributes.mode
    entry.st_nlink = attributes.nlink
    entry.st_uid = attributes.uid
    entry.st_gid = attributes.gid
    entry.st_rdev = attributes.rdev
    entry.st_size = attributes.size
    entry.st_blksize = BLOCK_SIZE
    entry.st_blocks = (attributes.size + 511) // 512
    entry.st_atime_ns = attributes.atime_ns
    entry.st_mtime_ns = attributes.mtime_ns
    entry.st_ctime_ns = attributes.ctime_ns
    entry.entry_timeout = ATTR_TIMEOUT
    entry.attr_timeout = ATTR_TIMEOUT
    return entry


class KernelCaches:
    """What the kernel may have cached of this mount, and telling it to forget what the lake changed."""

    def __init__(self) -> None:
        self.ready = False  # set once the kernel can have cached something (after the catch-up)

    async def forget(self, stale: Invalidations) -> None:
        """Make the kernel forget entries and inodes that other mounts' changes touched, so that ls,
        stat and open see them at once rather than after the attribute timeout."""
        if not self.ready:
            return  # the start-up catch-up: the kernel has nothing of ours cached yet
        for parent, name in stale.entries:
            pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
        for ino in stale.inodes:
            # In a thread: the kernel may wait for a request on this inode that this loop answers.
            await trio.to_thread.run_sync(_forget_inode, ino)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, mount: Mount) -> None:
        super().__init__()
        self.mount = mount
        self.files = mount.files
        self.following = mount.following
        self.tree = self.files.tree
        self.handles = self.files.handles
        self.control = self.files.control
        self._listings: dict[int, list[tuple[bytes, int]]] = {}
        self._next_listing = 1
        for name in dir(self):
            attribute = getattr(type(self), name, None)
            if inspect.iscoroutinefunction(attribute) and not name.startswith("_") and name != "forget":
                setattr(self, name, _translate_errors(getattr(self, name)))

    # -- entries ------------------------------------------------------------------------------
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return _entry(self.tree.lookup(parent_inode, name))

    async def forget(self, inode_list) -> None:
        self.tree.forget(inode_list)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return _entry(self.tree.attributes(inode))

    async def setattr(self, inode: int, attr, fields, fh, ctx) -> pyfuse3.EntryAttributes:
        changes = AttributeChanges(
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None)
        return _entry(await self.files.setattr(inode, changes, fh))

    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        return self.tree.readlink(inode)

    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        disk = os.statvfs(self.files.staging.directory)
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

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx) -> pyfuse3.EntryAttributes:
        return _entry(self.tree.mkdir(parent_inode, name, mode, ctx))

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx) -> pyfuse3.EntryAttributes:
        return _entry(self.files.mknod(parent_inode, name, mode, rdev, ctx))

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx) -> pyfuse3.EntryAttributes:
        return _entry(self.tree.symlink(parent_inode, name, target, ctx))

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx) -> pyfuse3.EntryAttributes:
        return _entry(self.tree.link(inode, new_parent_inode, new_name))

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        self.tree.unlink(parent_inode, name)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        self.tree.rmdir(parent_inode, name)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: Any = None) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # not supported: docs/SEMANTICS.md
        self.tree.rename(parent_inode_old, name_old, parent_inode_new, name_new,
                         no_replace=bool(flags & pyfuse3.RENAME_NOREPLACE))

    # -- directories --------------------------------------------------------------------------
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        number = self._next_listing
        self._next_listing += 1
        self._listings[number] = self.tree.listing(inode)
        return number

    async def readdir(self, fh: int, start_id: int, token) -> None:
        entries = self._listings.get(fh, [])
        for index in range(start_id, len(entries)):
            name, ino = entries[index]
            try:
                attributes = self.tree.attributes(ino)
            except FsError:
                continue  # removed since opendir
            if not pyfuse3.readdir_reply(token, name, _entry(attributes), index + 1):
                return
            if name not in (b".", b".."):  # the kernel counts no lookup for these
                self.tree.remember_lookup(ino)

    async def releasedir(self, fh: int) -> None:
        self._listings.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.files.commit(durable=True)

    # -- files --------------------------------------------------------------------------------
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx):
        opened, attributes = self.handles.create(parent_inode, name, mode, flags, ctx)
        return pyfuse3.FileInfo(fh=opened.fh, direct_io=opened.direct_io), _entry(attributes)

    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        opened = await self.handles.open(inode, flags)
        return pyfuse3.FileInfo(fh=opened.fh, keep_cache=opened.keep_cache, direct_io=opened.direct_io)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        return await self.handles.read(fh, off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        started = time.monotonic()
        written = await self.handles.write(fh, off, buf)
        self.control.latencies.observe("write", time.monotonic() - started)
        return written

    async def flush(self, fh: int) -> None:
        started = time.monotonic()
        self.handles.flush(fh)
        self.control.latencies.observe("close", time.monotonic() - started)

    async def release(self, fh: int) -> None:
        self.handles.release(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        started = time.monotonic()
        await self.handles.fsync(fh)
        self.control.latencies.observe("fsync", time.monotonic() - started)

    # -- extended attributes: per-file state and the control interface of the CLI -------------
    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        if history.is_virtual(inode):
            node = self.tree.view.node(inode)
            if (name == XATTR_STATE and isinstance(node, history.Node) and node.path
                    and node.version is None):
                live, changed_ns = self.tree.view.state(node.path)
                return b"live" if live else b"deleted " + history.version_name(changed_ns).encode()
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        node = self.tree.inode(inode)
        if name == XATTR_STATE:
            return self.control.state_of(node).encode()
        if name == XATTR_STATUS and inode == ROOT_INODE:
            return json.dumps(self.mount.status()).encode()
        if name == XATTR_BARRIER:
            return json.dumps(self.control.barrier(node)).encode()
        if name == XATTR_PROGRESS and inode == ROOT_INODE:
            return json.dumps(self.control.progress(), separators=(",", ":")).encode()
        if name.startswith(XATTR_PROGRESS_AFTER) and inode == ROOT_INODE:
            upto = name[len(XATTR_PROGRESS_AFTER):]
            if not upto.isdigit():
                raise pyfuse3.FUSEError(errno.EINVAL)
            return json.dumps(await self.control.progress_after(int(upto)), separators=(",", ":")).encode()
        if name == XATTR_REFRESH and inode == ROOT_INODE:
            return json.dumps(await self.following.refresh(sweep=True)).encode()
        if name == XATTR_PREFETCH and inode == ROOT_INODE:
            return json.dumps(self.control.last_prefetch).encode()
        if name == XATTR_SNAPSHOT and inode == ROOT_INODE:
            return json.dumps(self.following.last_forced_snapshot).encode()  # what the last setxattr did
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any = None) -> None:
        if inode == ROOT_INODE and name == XATTR_NO_DRAIN:
            self.control.no_drain = value.strip() in (b"1", b"true", b"yes")
            return
        if name == XATTR_PREFETCH:
            # An action on any path, so a set; its answer is read back with a get on the root.
            self.control.last_prefetch = await self.control.prefetch(self.tree.inode(inode))
            return
        if inode == ROOT_INODE and name == XATTR_SNAPSHOT:
            # An action, so a set: the kernel may ask a get twice (once for the size).
            await self.following.snapshot()
            return
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def listxattr(self, inode: int, ctx: Any = None) -> list[bytes]:
        if history.is_virtual(inode):
            return []
        names = [XATTR_STATE] if self.tree.inode(inode).is_file else []
        if inode == ROOT_INODE:
            names.append(XATTR_STATUS)
        return names

    async def removexattr(self, inode: int, name: bytes, ctx: Any = None) -> None:
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
