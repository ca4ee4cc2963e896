#!/usr/bin/env python3
"""A null pyfuse3 file system: it accepts writes and discards them, so a save into it measures the
floor any pyfuse3 file system has on this machine (the kernel round trips and pyfuse3's own cost),
against which scripts/bench.py reports the save stall of ckptfs. Like ckptfs, a write-only open
that creates or truncates a file uses direct_io (the page cache is skipped), and the kernel reads
ahead 1 MiB at a time (ckptfs/daemon.py `set_read_ahead`; the default, 128 KiB, made reading back
cost three times the CPU here).

    python scripts/nullfs.py MOUNTPOINT [--stage FILE]   # serves until unmounted (fusermount3 -u)

Names, directories and sizes are kept in memory; reads return zeros. With `--stage FILE`, every
write is also `pwrite` into FILE at its offset, as ckptfs's write handler writes into its staging
file: what that does to pyfuse3's own cost (the dirtied page cache, the writer woken by each answer)
shows apart from the rest of ckptfs.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time

import pyfuse3
import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from ckptfs.daemon import READ_AHEAD_KB, set_read_ahead  # noqa: E402


class NullFs(pyfuse3.Operations):
    stage: int | None = None  # a file every write also goes into (--stage)

    def __init__(self) -> None:
        super().__init__()
        now = time.time_ns()
        self.entries: dict[int, dict] = {pyfuse3.ROOT_INODE: {"mode": stat.S_IFDIR | 0o755, "size": 0, "time": now}}
        self.children: dict[int, dict[bytes, int]] = {pyfuse3.ROOT_INODE: {}}
        self.next_inode = pyfuse3.ROOT_INODE + 1

    def _attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        entry = self.entries[inode]
        attributes = pyfuse3.EntryAttributes()
        attributes.st_ino = inode
        attributes.st_mode = entry["mode"]
        attributes.st_size = entry["size"]
        attributes.st_nlink = 1
        attributes.st_uid, attributes.st_gid = os.getuid(), os.getgid()
        attributes.st_atime_ns = attributes.st_mtime_ns = attributes.st_ctime_ns = entry["time"]
        attributes.entry_timeout = attributes.attr_timeout = 1
        return attributes

    def _make(self, parent: int, name: bytes, mode: int) -> int:
        inode = self.next_inode
        self.next_inode += 1
        self.entries[inode] = {"mode": mode, "size": 0, "time": time.time_ns()}
        self.children[parent][name] = inode
        if stat.S_ISDIR(mode):
            self.children[inode] = {}
        return inode

    async def lookup(self, parent_inode, name, ctx=None):
        inode = self.children.get(parent_inode, {}).get(name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(inode)

    async def getattr(self, inode, ctx=None):
        return self._attributes(inode)

    async def setattr(self, inode, attr, fields, fh, ctx):
        if fields.update_size:
            self.entries[inode]["size"] = attr.st_size
        return self._attributes(inode)

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._attributes(self._make(parent_inode, name, stat.S_IFDIR | mode))

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        for index, (name, inode) in enumerate(sorted(self.children[fh].items())):
            if index >= start_id and not pyfuse3.readdir_reply(token, name, self._attributes(inode), index + 1):
                return

    async def create(self, parent_inode, name, mode, flags, ctx):
        inode = self.children[parent_inode].get(name) or self._make(parent_inode, name, stat.S_IFREG | mode)
        self.entries[inode]["size"] = 0
        return pyfuse3.FileInfo(fh=inode, direct_io=(flags & os.O_ACCMODE) == os.O_WRONLY), self._attributes(inode)

    async def open(self, inode, flags, ctx):
        if flags & os.O_TRUNC:
            self.entries[inode]["size"] = 0
        direct = (flags & os.O_ACCMODE) == os.O_WRONLY and bool(flags & os.O_TRUNC)
        return pyfuse3.FileInfo(fh=inode, direct_io=direct)

    async def write(self, fh, offset, buf):
        entry = self.entries[fh]
        entry["size"] = max(entry["size"], offset + len(buf))
        if self.stage is not None:
            os.pwrite(self.stage, buf, offset)
        return len(buf)

    async def read(self, fh, offset, size):
        return bytes(max(0, min(size, self.entries[fh]["size"] - offset)))

    async def unlink(self, parent_inode, name, ctx):
        self.children[parent_inode].pop(name, None)

    async def rename(self, parent_old, name_old, parent_new, name_new, flags, ctx):
        self.children[parent_new][name_new] = self.children[parent_old].pop(name_old)

    async def release(self, fh):
        pass

    async def flush(self, fh):
        pass

    async def fsync(self, fh, datasync):
        pass


def main() -> int:
    mountpoint = os.path.abspath(sys.argv[1])
    null = NullFs()
    if sys.argv[2:3] == ["--stage"]:
        null.stage = os.open(sys.argv[3], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    pyfuse3.init(null, mountpoint, set(pyfuse3.default_options) | {"fsname=nullfs"})

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(set_read_ahead, mountpoint, READ_AHEAD_KB)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    try:
        trio.run(serve)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
