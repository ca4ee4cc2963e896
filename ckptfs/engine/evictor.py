"""The evictor: keeps the staging files under their share of the cache budget.

Only COMMITTED versions are ever evicted: their bytes are in the lake, and reads fall back to the
fetcher once `staged` is cleared. OPEN and SEALED versions (dirty data) are never touched, nor a
version pinned by a copy in progress. Clean versions wait in an LRU (an ordered dict), so finding
the next victim costs O(1) whatever the number of cached files. Runs on the trio thread, so a read
handler sees either the staging file or the cleared flag, never a half-evicted version.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

import trio

from ckptfs.cache.journal import COMMITTED, Journal
from ckptfs.cache.staging import Staging

log = logging.getLogger(__name__)


class Evictor:
    def __init__(self, journal: Journal, staging: Staging, limit_bytes: int, *, interval: float = 2.0,
                 forget: Callable[[int], None] = lambda version: None) -> None:
        self.journal = journal
        self.staging = staging
        self.forget = forget  # what was uploaded or spilled of a version early goes with its staging file
        self.limit_bytes = limit_bytes
        self.interval = interval
        self.clean: OrderedDict[int, None] = OrderedDict(
            (version.id, None) for version in journal.staged_versions() if version.state == COMMITTED)
        self.evicted_bytes = 0

    def committed(self, version: int) -> None:
        """A version's bytes reached the lake: its staging file is clean cache from now on. A spilled
        one (its prefix punched out, engine/spill.py) goes at once: the manifest serves it better."""
        if self.staging.holes.get(version) and version not in self.staging.pinned:
            self._evict(version)
            self.journal.commit()
            return
        self.clean[version] = None
        self.clean.move_to_end(version)

    def uncommitted(self, version: int) -> None:
        """A committed version must be uploaded again (engine/leases.py): its staging file is dirty."""
        self.clean.pop(version, None)

    def touch(self, version: int) -> None:
        if version in self.clean:
            self.clean.move_to_end(version)

    def evict(self, target: int | None = None) -> int:
        """Evict least recently used clean versions until the staging files fit in `target` (default:
        the limit); returns bytes freed."""
        target = self.limit_bytes if target is None else target
        freed = 0
        skipped = []
        while self.staging.total_bytes > target and self.clean:
            version, _ = self.clean.popitem(last=False)
            if version in self.staging.pinned:
                skipped.append(version)
                continue
            freed += self._evict(version)
        for version in skipped:
            self.clean[version] = None
        if freed:
            self.journal.commit()
            self.evicted_bytes += freed
            log.debug("evicted %d bytes of committed staging files (limit %d)", freed, self.limit_bytes)
        return freed

    def _evict(self, version: int) -> int:
        size = self.staging.charged(version)
        self.staging.remove(version)
        self.forget(version)
        self.journal.update_version(version, staged=0)
        return size

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval)
            self.evict()
