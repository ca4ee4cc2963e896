"""Spilling: a file larger than the cache leaves the cache disk while it is being written.

`--cache-size` holds for dirty data too. When the staging files are about to pass their share and
nothing clean is left to evict, the files being written spill: their written prefix is cut and
uploaded early (engine/prefix.py, whatever `--upload-while-writing` says), and after every window
whose chunks are in the lake, that prefix is punched out of the staging file. Before any byte is
punched, the journal records the chunks that hold it, durably. So:

* reads of the punched range come from those chunks (through the fetcher and the chunk cache);
* at seal the version worker starts after the prefix, after a crash too (the journal has it);
* a write or truncate below the recorded prefix first writes the punched bytes back and forgets the
  prefix (`restore`); the file is then uploaded the ordinary way;
* a new version copied from a spilled, still uploading one gets the punched bytes filled in;
* a spilled version is evicted as soon as it is committed: its manifest serves reads from then on.

The punch stops LOOKBACK bytes (rounded down to a page) short of the prefix's end: the next round,
and the seal, read those bytes to place the first record cut after the prefix.

Invariant: a prefix recorded in the journal always matches the staging file's bytes, so every
change below it goes through `restore` (or, for truncation to zero, `drop`) first.
"""

from __future__ import annotations

import errno
import logging
import os

import trio

from ckptfs.cache.journal import COMMITTED, Journal, Version
from ckptfs.cache.staging import Staging
from ckptfs.engine.early import Early
from ckptfs.engine.fetcher import Fetcher
from ckptfs.lake.chunker import LOOKBACK
from ckptfs.lake.manifest import chunk_offsets
from ckptfs.lake.packs import LOOSE, Location

log = logging.getLogger(__name__)

PAGE = 4096
AHEAD_MAX = 256 << 20


def spill_threshold(limit: int) -> int:
    """Staged bytes above which files being written start to spill: an eighth of the budget (at most
    256 MiB) ahead of it, so the upload overlaps the writes instead of stopping them."""
    return limit - min(limit // 8, AHEAD_MAX)


class Spill:
    def __init__(self, journal: Journal, staging: Staging, fetcher: Fetcher) -> None:
        self.journal = journal
        self.staging = staging
        self.fetcher = fetcher
        self.supported = True  # False once the cache disk refused to punch a hole
        self.prefix_end: dict[int, int] = {}  # version -> end of its prefix recorded in the journal
        self._index: dict[int, tuple[list[tuple[bytes, int]], list[int], int, list[Location]]] = {}
        self._restoring: dict[int, trio.Event] = {}
        self._recover()

    def _recover(self) -> None:
        """At start-up: learn the recorded prefixes; a committed spilled version is evicted."""
        changed = False
        for version in self.journal.staged_versions():
            if not version.prefix_end:
                continue
            if version.state == COMMITTED:
                self.staging.remove(version.id)
                self.journal.update_version(version.id, staged=0)
                self.journal.clear_prefix(version.id)
                changed = True
                continue
            self.prefix_end[version.id] = version.prefix_end
            self.staging.set_hole(version.id, version.hole_end)
        if changed:
            self.journal.commit(durable=True)

    # -- freeing -------------------------------------------------------------------------------
    def punch(self, version: int, early: Early) -> None:
        """Record the uploaded prefix [0, early.done) in the journal, then punch it out (on the trio
        thread, so no write or restore runs in between)."""
        hole = max(0, (early.done - LOOKBACK) // PAGE * PAGE)
        self.journal.extend_prefix(version, early.entries[early.persisted:], first_seq=early.persisted,
                                   end=early.done, hole_end=hole, new_bytes=early.new_bytes,
                                   stored_bytes=early.stored_bytes)
        self.journal.commit(durable=True)  # the chunk list must survive a crash before a byte is gone
        early.persisted = len(early.entries)
        self.prefix_end[version] = early.done
        self._index.pop(version, None)
        if not self.supported:
            return
        try:
            self.staging.punch(version, hole)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            self.supported = False
            log.warning("the cache disk cannot punch holes (%s): files larger than --cache-size will "
                        "stay whole on it until they are uploaded", error.strerror)

    # -- reading -------------------------------------------------------------------------------
    def _chunks(self, version: int) -> tuple[list[tuple[bytes, int]], list[int], int, list[Location]]:
        cached = self._index.get(version)
        if cached is None:
            chunks, _, _ = self.journal.prefix(version)
            # Every prefix chunk is in the lake, and the journal learnt where when it landed.
            locations = [self.journal.chunk_location(chunk) or LOOSE for chunk, _ in chunks]
            cached = self._index[version] = (chunks, chunk_offsets(chunks), sum(length for _, length in chunks),
                                             locations)
        return cached

    async def read(self, version: Version, offset: int, size: int, *, sequential: bool) -> bytes | memoryview:
        """Bytes of a version whose staging file has its prefix punched out."""
        hole = version.hole_end
        # The staged tail is read first, before any await can let the version be evicted.
        tail = b""
        if offset + size > hole:
            start = max(offset, hole)
            tail = os.pread(self.staging.fd(version.id), offset + size - start, start)
        if offset >= hole:
            return tail
        chunks, offsets, total, locations = self._chunks(version.id)
        head = await self.fetcher.read_chunks(chunks, offsets, min(total, hole), offset, min(size, hole - offset),
                                              sequential=sequential, locations=locations)
        return b"".join((head, tail)) if tail else head

    async def fill(self, version: Version, fd: int) -> None:
        """Write the punched bytes [0, hole_end) of `version` into `fd` (its staging file or a copy)."""
        chunks, offsets, _, locations = self._chunks(version.id)
        for (chunk, _), start, where in zip(chunks, offsets, locations, strict=True):
            if start >= version.hole_end:
                break
            data = await self.fetcher.chunk(chunk, where)
            with memoryview(data) as view:
                os.pwrite(fd, view[:version.hole_end - start], start)

    # -- forgetting ----------------------------------------------------------------------------
    async def restore(self, identifier: int) -> None:
        """Before a change below the recorded prefix: write the punched bytes back, then forget it."""
        waiting = self._restoring.get(identifier)
        if waiting is not None:
            await waiting.wait()
            return
        done = self._restoring[identifier] = trio.Event()
        try:
            version = self.journal.version(identifier)
            if version is None or not version.prefix_end:
                return
            if version.hole_end:
                log.info("version %x is changed below its spilled prefix: fetching %d bytes back",
                         identifier, version.hole_end)
                await self.fill(version, self.staging.fd(identifier))
                # Synced before the journal forgets the chunks: a crash must find one or the other.
                await trio.to_thread.run_sync(self.staging.datasync, identifier)
            self.forget(identifier)
            self.staging.set_hole(identifier, 0)
        finally:
            del self._restoring[identifier]
            done.set()

    def drop(self, identifier: int) -> None:
        """The staging file was truncated to zero: nothing is left of the prefix."""
        self.forget(identifier)
        self.staging.set_hole(identifier, 0)

    def forget(self, identifier: int) -> None:
        """Forget a version's prefix: its bytes are local again, gone, or in a committed manifest."""
        if self.prefix_end.pop(identifier, None) is not None:
            self.journal.clear_prefix(identifier)
            self.journal.commit(durable=True)
        self._index.pop(identifier, None)
