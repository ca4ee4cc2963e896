"""A bounded on-disk cache of verified chunks fetched from the lake, shared by every version.

Restoring step-2000 after step-1000 downloads only the chunks that changed. Entries are files named by
chunk id; eviction is least-recently-used under a byte limit, O(1) per eviction. A cached chunk is
verified again when read, so a damaged cache file is dropped rather than served.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

from ckptfs.lake.codec import chunk_id

log = logging.getLogger(__name__)


class ChunkCache:
    def __init__(self, directory: str, limit_bytes: int) -> None:
        self.directory = directory
        self.limit_bytes = limit_bytes
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._entries: OrderedDict[bytes, int] = OrderedDict()
        self.used_bytes = 0
        self.reserved_bytes = 0  # of chunks being fetched: room made before their files are written
        found = []
        for name in os.listdir(directory):
            try:
                identifier = bytes.fromhex(name)
                stat = os.stat(os.path.join(directory, name))
                found.append((stat.st_atime_ns, identifier, stat.st_size))
            except (ValueError, OSError):
                continue
        for _, identifier, size in sorted(found):
            self._entries[identifier] = size
            self.used_bytes += size

    def _path(self, identifier: bytes) -> str:
        return os.path.join(self.directory, identifier.hex())

    def __contains__(self, identifier: bytes) -> bool:
        return identifier in self._entries

    def load(self, identifier: bytes) -> bytes | None:
        """The cached chunk's bytes if they verify, else None. Touches no bookkeeping: safe in a
        worker thread (the fetcher reads here off the event loop, then calls `loaded`)."""
        try:
            with open(self._path(identifier), "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return None
        return data if chunk_id(data) == identifier else None

    def loaded(self, identifier: bytes, data: bytes | None) -> bytes | None:
        """Record the outcome of `load`: a damaged or missing entry is dropped."""
        if data is None:
            if identifier in self._entries:
                log.warning("cached chunk %s is damaged; dropping it", identifier.hex())
                self.discard(identifier)
            return None
        if identifier in self._entries:
            self._entries.move_to_end(identifier)
        return data

    def write(self, identifier: bytes, data: bytes) -> bool:
        """Write a verified chunk's file; whether it was written. Touches no bookkeeping: safe in a
        worker thread (then call `added` on the owning thread)."""
        if identifier in self._entries or len(data) > self.limit_bytes:
            return False
        temporary = self._path(identifier) + ".tmp"
        with open(temporary, "wb") as file:
            file.write(data)
        os.replace(temporary, self._path(identifier))
        return True

    def added(self, identifier: bytes, size: int) -> None:
        if identifier not in self._entries:
            self._entries[identifier] = size
            self.used_bytes += size
            self.shrink_to(self.limit_bytes - self.reserved_bytes)

    def reserve(self, size: int) -> None:
        """Make room for `size` bytes about to be written by `write` in a worker thread, so that the
        files on disk never exceed the limit; `release` it once they are `added` (or not written)."""
        self.reserved_bytes += size
        self.shrink_to(max(0, self.limit_bytes - self.reserved_bytes))

    def release(self, size: int) -> None:
        self.reserved_bytes -= size

    def discard(self, identifier: bytes) -> None:
        size = self._entries.pop(identifier, None)
        if size is not None:
            self.used_bytes -= size
        try:
            os.unlink(self._path(identifier))
        except FileNotFoundError:
            pass

    def shrink_to(self, limit_bytes: int) -> None:
        while self.used_bytes > limit_bytes and self._entries:
            self.discard(next(iter(self._entries)))
