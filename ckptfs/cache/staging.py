"""Staging files: the written bytes of each local file version, one sparse file per version.

Files are named by the version's hex id only (never by a user-supplied name). A staging file is written
with pwrite while its version is open and never modified after the version is sealed, so the uploader
and readers can use it without locks. Open descriptors are kept in a small LRU.

The size of every staging file is tallied here as it changes, so the cache budget is checked in
O(1) on the write path. Sizes are logical (a sparse file counts in full): a conservative bound. The one
exception is a prefix punched out once it is in the lake (engine/spill.py): the bytes from there on
are what counts.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections import OrderedDict

from ckptfs.libc import punch_hole

log = logging.getLogger(__name__)


class Staging:
    def __init__(self, directory: str, max_open: int = 256) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._max_open = max_open
        self.pinned: set[int] = set()  # versions whose staging file a copy is reading: not evictable
        self.sizes: dict[int, int] = {}
        self.holes: dict[int, int] = {}  # version -> end of its punched prefix
        self.punched_bytes = 0  # punched out since the daemon started: what spilled to the lake
        self.total_bytes = 0
        self.peak_bytes = 0
        self._reserve = self.reserve_bytes()
        self._room = 0  # bytes known free beyond the reserve (check_space)
        for name in os.listdir(directory):
            try:
                self._set_size(int(name, 16), os.stat(os.path.join(directory, name)).st_size)
            except (ValueError, OSError):
                continue

    def charged(self, version: int) -> int:
        """The bytes of the version's staging file counted against the budget."""
        return max(0, self.sizes.get(version, 0) - self.holes.get(version, 0))

    def _set_size(self, version: int, size: int) -> None:
        before = self.charged(version)
        self.sizes[version] = size
        if self.holes.get(version, 0) > size:  # truncated into the punched prefix
            if size:
                self.holes[version] = size
            else:
                del self.holes[version]
        self.total_bytes += self.charged(version) - before
        self.peak_bytes = max(self.peak_bytes, self.total_bytes)

    def punch(self, version: int, end: int) -> None:
        """Free [0, end) of the version's staging file: its bytes are in the lake (engine/spill.py)."""
        start = self.holes.get(version, 0)
        if end <= start:
            return
        punch_hole(self.fd(version), start, end - start)
        self.punched_bytes += end - start
        self.set_hole(version, end)

    def set_hole(self, version: int, end: int) -> None:
        """Record a punched prefix without punching: at start-up (the journal knows it), or 0 once its
        bytes were written back."""
        before = self.charged(version)
        if end:
            self.holes[version] = end
        else:
            self.holes.pop(version, None)
        self.total_bytes += self.charged(version) - before

    def path(self, version: int) -> str:
        return os.path.join(self.directory, f"{version:016x}")

    def fd(self, version: int) -> int:
        """A read-write descriptor for the version's staging file, created if missing."""
        fd = self._fds.get(version)
        if fd is not None:
            self._fds.move_to_end(version)
            return fd
        fd = os.open(self.path(version), os.O_RDWR | os.O_CREAT, 0o600)
        self._fds[version] = fd
        while len(self._fds) > self._max_open:
            _, oldest = self._fds.popitem(last=False)
            os.close(oldest)
        return fd

    def create(self, version: int, copy_from: int | None = None) -> None:
        """Create an empty staging file, or a copy of another version's (reflinked where the fs can)."""
        if copy_from is None:
            self.fd(version)
            self._set_size(version, 0)
            return
        with open(self.path(copy_from), "rb") as source, open(self.path(version), "wb") as target:
            size = os.fstat(source.fileno()).st_size
            copied = 0
            try:
                while copied < size:
                    done = os.copy_file_range(source.fileno(), target.fileno(), size - copied)
                    if done == 0:
                        break
                    copied += done
            except OSError:
                source.seek(0)
                target.seek(0)
                shutil.copyfileobj(source, target, 1 << 20)
            target.truncate(size)
        self._set_size(version, size)

    def reserve_bytes(self) -> int:
        """Free space kept on the cache disk for the journal: staging writes stop short of it."""
        disk = os.statvfs(self.directory)
        return min(64 << 20, max(1 << 20, disk.f_blocks * disk.f_frsize // 20))

    def check_space(self, needed: int) -> None:
        """Refuse a write that would eat into the reserve. statvfs runs only when half of the room it
        last found is used up: on every 1 MiB write it was 3% of the daemon's write path (py-spy).
        Halving leaves the other half to whatever else writes to the disk meanwhile, and the checks
        come closer together as the disk fills."""
        if needed <= self._room:
            self._room -= needed
            return
        disk = os.statvfs(self.directory)
        free = disk.f_bavail * disk.f_frsize - self._reserve
        if free < needed:
            self._room = 0
            raise OSError(errno.ENOSPC, "cache disk full (space is kept for the journal)")
        self._room = (free - needed) // 2

    def write(self, version: int, data: bytes, offset: int) -> int:
        if offset + len(data) > self.sizes.get(version, 0):
            self.check_space(len(data))
        written = os.pwrite(self.fd(version), data, offset)
        if offset + written > self.sizes.get(version, 0):
            self._set_size(version, offset + written)
        return written

    def truncate(self, version: int, size: int) -> None:
        os.ftruncate(self.fd(version), size)
        self._set_size(version, size)

    def refresh_size(self, version: int) -> None:
        """Re-read the size after the file was written through its descriptor directly."""
        self._set_size(version, os.fstat(self.fd(version)).st_size)

    def exists(self, version: int) -> bool:
        return os.path.exists(self.path(version))

    def size(self, version: int) -> int:
        return os.fstat(self.fd(version)).st_size

    def datasync(self, version: int) -> None:
        os.fdatasync(self.fd(version))

    def forget_fd(self, version: int) -> None:
        fd = self._fds.pop(version, None)
        if fd is not None:
            os.close(fd)

    def remove(self, version: int) -> None:
        self.forget_fd(version)
        self.total_bytes -= self.charged(version)
        self.sizes.pop(version, None)
        self.holes.pop(version, None)
        try:
            os.unlink(self.path(version))
        except FileNotFoundError:
            pass

    def versions_on_disk(self) -> list[int]:
        result = []
        for name in os.listdir(self.directory):
            try:
                result.append(int(name, 16))
            except ValueError:
                continue
        return result

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])
