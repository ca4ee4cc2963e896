#!/usr/bin/env python3
"""A pass-through FUSE layer that can lose, at an instant of the caller's choosing, every write not yet
made durable, as a disk loses its volatile cache in a power cut. Crash trials put a mount's cache dir
on it (tests/crashtrial.py).

    python tests/powercut.py BACKING MOUNTPOINT
    kill -USR1 PID   # power cut: undo every write since its file's last fsync, then fail all requests
    kill -USR2 PID   # power back: serve the backing directory again, as the cut left it

The layer answers each signal with a line on stdout ("cut N" with the number of writes undone, then
"live"), so a harness knows when the state is final.

The model is LazyFS's (the layer Jepsen uses on databases): file *data* is volatile until fsync() or
fdatasync() of the file (either makes every earlier write to that inode durable, through any
descriptor), and a truncate is data too; names (create, mkdir, rename, unlink, link, symlink) are
durable at once, which is what a journaling file system gives a caller that fsyncs the file it created.
Writes go straight to the backing file, each with an undo record (the bytes and the size it replaced);
a cut applies the records of every inode in reverse, leaving the backing directory as the disk would
be after the power came back, and drops the kernel's cached pages and attributes of the layer.
Requests are served one at a time on the trio thread without awaiting, so a cut falls between two
requests, never inside one.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import stat
import sys

import pyfuse3
import trio

ROOT = pyfuse3.ROOT_INODE


def _request(handler):
    """A request handler: EIO while the power is off; a backing error (ENOSPC, ENOENT, ...) goes
    back to the caller as that error, as a disk's would."""
    @functools.wraps(handler)
    async def serve(self, *args):
        if self.dead:
            raise pyfuse3.FUSEError(errno.EIO)
        try:
            return await handler(self, *args)
        except OSError as error:
            raise pyfuse3.FUSEError(error.errno) from None
    return serve


class PowerCutFs(pyfuse3.Operations):
    def __init__(self, backing: str) -> None:
        super().__init__()
        self.backing = os.path.realpath(backing)
        self.path_of: dict[int, str] = {ROOT: self.backing}
        self.inode_of: dict[int, int] = {os.lstat(self.backing).st_ino: ROOT}  # backing st_ino -> ours
        self.next_inode = ROOT + 1
        self.fds: dict[int, int] = {}  # file handle (a backing descriptor) -> our inode
        self.undo: dict[int, list[tuple[int, bytes, int]]] = {}  # inode -> [(offset, old bytes, old size)]
        self.undo_fds: dict[int, int] = {}  # inode -> a descriptor kept for undoing, also once unlinked
        self.dead = False
        self.cuts = 0

    # -- names --------------------------------------------------------------------------------
    def _remember(self, path: str) -> pyfuse3.EntryAttributes:
        st = os.lstat(path)
        inode = self.inode_of.get(st.st_ino)
        if inode is None:
            inode = self.inode_of[st.st_ino] = self.next_inode
            self.next_inode += 1
        self.path_of[inode] = path
        return self._attributes(inode, st)

    def _attributes(self, inode: int, st: os.stat_result) -> pyfuse3.EntryAttributes:
        attributes = pyfuse3.EntryAttributes()
        attributes.st_ino = inode
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_blocks",
                     "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(attributes, name, getattr(st, name))
        attributes.st_blksize = 4096
        attributes.entry_timeout = attributes.attr_timeout = 0  # the cut changes sizes behind the kernel
        return attributes

    def _path(self, inode: int, name: bytes | None = None) -> str:
        try:
            base = self.path_of[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None
        return base if name is None else os.path.join(base, os.fsdecode(name))

    @_request
    async def lookup(self, parent_inode, name, ctx=None):
        return self._remember(self._path(parent_inode, name))

    @_request
    async def getattr(self, inode, ctx=None):
        if inode not in self.path_of:  # unlinked, still open
            fd = next((fd for fd, of in self.fds.items() if of == inode), None)
            if fd is not None:
                return self._attributes(inode, os.fstat(fd))
        return self._attributes(inode, os.lstat(self._path(inode)))

    @_request
    async def setattr(self, inode, attr, fields, fh, ctx):
        path = self._path(inode)
        if fields.update_size:
            fd = os.open(path, os.O_RDWR) if fh is None else fh
            try:
                self._truncate(inode, fd, attr.st_size)
            finally:
                if fh is None:
                    os.close(fd)
        if fields.update_mode:
            os.chmod(path, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            os.chown(path, attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1,
                     follow_symlinks=False)
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(path)
            os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                               attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns),
                     follow_symlinks=False)
        return self._attributes(inode, os.lstat(path))

    @_request
    async def readlink(self, inode, ctx):
        return os.fsencode(os.readlink(self._path(inode)))

    # A new name on the backing directory is durable at once, as names are in this model.
    @_request
    async def mkdir(self, parent_inode, name, mode, ctx):
        path = self._path(parent_inode, name)
        os.mkdir(path, mode)
        return self._remember(path)

    @_request
    async def symlink(self, parent_inode, name, target, ctx):
        path = self._path(parent_inode, name)
        os.symlink(target, path)
        return self._remember(path)

    @_request
    async def link(self, inode, new_parent_inode, new_name, ctx):
        path = self._path(new_parent_inode, new_name)
        os.link(self._path(inode), path)
        return self._remember(path)

    @_request
    async def unlink(self, parent_inode, name, ctx):
        path = self._path(parent_inode, name)
        st = os.lstat(path)
        os.unlink(path)
        if st.st_nlink == 1:
            self._forget_name(st.st_ino, path)

    @_request
    async def rmdir(self, parent_inode, name, ctx):
        path = self._path(parent_inode, name)
        st = os.lstat(path)
        os.rmdir(path)
        self._forget_name(st.st_ino, path)

    def _forget_name(self, st_ino: int, path: str) -> None:
        """The name is gone: stop invalidating it at cuts (the kernel may still hold the inode
        number; a later lookup of another file gets a fresh one)."""
        inode = self.inode_of.get(st_ino)
        if inode is not None and self.path_of.get(inode) == path:
            del self.inode_of[st_ino]
            del self.path_of[inode]

    @_request
    async def rename(self, parent_old, name_old, parent_new, name_new, flags, ctx):
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old, new = self._path(parent_old, name_old), self._path(parent_new, name_new)
        os.rename(old, new)
        prefix = old + os.sep
        for inode, path in list(self.path_of.items()):  # the moved entry and, for a directory, what is below
            if path == old:
                self.path_of[inode] = new
            elif path.startswith(prefix):
                self.path_of[inode] = new + path[len(old):]

    @_request
    async def opendir(self, inode, ctx):
        return inode

    @_request
    async def readdir(self, fh, start_id, token):
        directory = self._path(fh)
        names = sorted(os.listdir(directory))
        for index, name in enumerate(names[start_id:], start_id):
            try:
                attributes = self._remember(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attributes, index + 1):
                return

    async def releasedir(self, fh):
        pass

    @_request
    async def fsyncdir(self, fh, datasync):
        pass  # names are durable at once

    @_request
    async def statfs(self, ctx):
        st = os.statvfs(self.backing)
        result = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                     "f_favail", "f_namemax"):
            setattr(result, name, getattr(st, name))
        return result

    # -- data ---------------------------------------------------------------------------------
    def _keep_undo(self, inode: int, fd: int, offset: int, old: bytes, old_size: int) -> None:
        if inode not in self.undo_fds:
            self.undo_fds[inode] = os.dup(fd)
        self.undo.setdefault(inode, []).append((offset, old, old_size))

    def _truncate(self, inode: int, fd: int, size: int) -> None:
        old_size = os.fstat(fd).st_size
        if size != old_size:
            self._keep_undo(inode, fd, size, os.pread(fd, max(0, old_size - size), size), old_size)
            os.ftruncate(fd, size)

    def _open(self, inode: int, path: str, flags: int, mode: int = 0o644) -> pyfuse3.FileInfo:
        access = os.O_RDWR if flags & os.O_ACCMODE != os.O_RDONLY else os.O_RDONLY
        fd = os.open(path, access | (flags & (os.O_CREAT | os.O_EXCL)), mode)
        if flags & os.O_TRUNC:
            self._truncate(inode, fd, 0)
        self.fds[fd] = inode
        return pyfuse3.FileInfo(fh=fd)

    @_request
    async def open(self, inode, flags, ctx):
        return self._open(inode, self._path(inode), flags)

    @_request
    async def create(self, parent_inode, name, mode, flags, ctx):
        path = self._path(parent_inode, name)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | (flags & os.O_EXCL), mode))
        attributes = self._remember(path)
        return self._open(attributes.st_ino, path, flags & ~(os.O_CREAT | os.O_EXCL)), attributes

    @_request
    async def read(self, fh, offset, size):
        return os.pread(fh, size, offset)

    @_request
    async def write(self, fh, offset, buf):
        inode = self.fds[fh]
        self._keep_undo(inode, fh, offset, os.pread(fh, len(buf), offset), os.fstat(fh).st_size)
        return os.pwrite(fh, buf, offset)

    @_request
    async def fsync(self, fh, datasync):
        inode = self.fds[fh]
        self.undo.pop(inode, None)  # every earlier write to this inode is durable now
        fd = self.undo_fds.pop(inode, None)
        if fd is not None:
            os.close(fd)

    @_request
    async def flush(self, fh):
        pass

    async def release(self, fh):
        self.fds.pop(fh, None)
        os.close(fh)

    # -- the power ----------------------------------------------------------------------------
    async def cut(self) -> int:
        """Undo every write not made durable, then fail every request until `revive`."""
        self.dead = True
        undone = 0
        for inode, records in self.undo.items():
            fd = self.undo_fds[inode]
            for offset, old, old_size in reversed(records):
                os.pwrite(fd, old, offset)
                os.ftruncate(fd, old_size)
                undone += 1
            os.close(fd)
        self.undo.clear()
        self.undo_fds.clear()
        self.cuts += 1
        # The kernel's pages and attributes of the layer were the volatile state too. Invalidating
        # may wait for the kernel to write dirty pages back through this loop: from a thread.
        await trio.to_thread.run_sync(_invalidate, list(self.path_of))
        return undone

    def revive(self) -> None:
        self.dead = False


def _invalidate(inodes: list[int]) -> None:
    for inode in inodes:
        try:
            pyfuse3.invalidate_inode(inode, attr_only=False)
        except OSError:
            pass  # the kernel had forgotten it


async def serve(fs: PowerCutFs) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pyfuse3.main)
        with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM) as signals:
            print("ready", flush=True)
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    print(f"cut {await fs.cut()}", flush=True)
                elif signum == signal.SIGUSR2:
                    fs.revive()
                    print("live", flush=True)
                else:
                    nursery.cancel_scope.cancel()


def main() -> int:
    backing, mountpoint = sys.argv[1], sys.argv[2]
    fs = PowerCutFs(backing)
    pyfuse3.init(fs, mountpoint, set(pyfuse3.default_options) | {"fsname=powercut"})
    try:
        trio.run(serve, fs)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
