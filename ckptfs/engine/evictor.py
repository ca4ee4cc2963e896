"""The evictor: keeps the staging files of committed versions under the cache budget, oldest use first.

Only COMMITTED versions are ever evicted: their bytes are in the lake, and reads fall back to the
fetcher once `staged` is cleared. OPEN and SEALED versions (dirty data) are never touched, nor a
version pinned by a copy in progress. Runs on the trio thread, so a read handler sees either the
staging file or the cleared flag, never a half-evicted version.
"""

from __future__ import annotations

import logging
import time

import trio

from ckptfs.cache.journal import COMMITTED, Journal
from ckptfs.cache.staging import Staging

log = logging.getLogger(__name__)


class Evictor:
    def __init__(self, journal: Journal, staging: Staging, limit_bytes: int, *, interval: float = 2.0) -> None:
        self.journal = journal
        self.staging = staging
        self.limit_bytes = limit_bytes
        self.interval = interval
        self.last_used: dict[int, float] = {}
        self.evicted_bytes = 0

    def touch(self, version: int) -> None:
        self.last_used[version] = time.monotonic()

    def evict_once(self) -> int:
        """Evict until staged bytes fit the limit; returns the bytes freed."""
        staged = self.journal.staged_versions()
        usage = {v.id: self.staging.disk_usage(v.id) for v in staged}
        total = sum(usage.values())
        if total <= self.limit_bytes:
            return 0
        candidates = [v for v in staged if v.state == COMMITTED and v.id not in self.staging.pinned]
        candidates.sort(key=lambda v: (self.last_used.get(v.id, 0.0), v.id))
        freed = 0
        for version in candidates:
            if total - freed <= self.limit_bytes:
                break
            self.staging.remove(version.id)
            self.journal.update_version(version.id, staged=0)
            self.last_used.pop(version.id, None)
            freed += usage[version.id]
        if freed:
            self.journal.commit()
            self.evicted_bytes += freed
            log.info("evicted %d bytes of committed staging files (limit %d)", freed, self.limit_bytes)
        return freed

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval)
            self.evict_once()
