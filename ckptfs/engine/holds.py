"""Holds: the versions this mount has opened for reading, told to the lake so that GC keeps them.

A job that resumed from a checkpoint must not lose it to rotation or retention while it runs
(Lightning #17189: rotation deleted the checkpoint a run had resumed from). Every open for reading
of a committed version records its manifest and the time; `holds/<mount id>` (lake/keeps.py) is
rewritten within DEBOUNCE seconds of a new one, and GC keeps every manifest opened within the last
keeps.HOLD_NS (7 days). Opening the same version again rewrites the object only when its recorded
time is more than REFRESH_NS old, so reading a checkpoint costs at most one PUT an hour.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from ckptfs.lake import Lake, keeps
from ckptfs.store import StoreError

log = logging.getLogger(__name__)
DEBOUNCE = 1.0
REFRESH_NS = 3600 * 10**9


class Holds:
    def __init__(self, lake: Lake, mount_id: str, network: trio.CapacityLimiter, *,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.lake = lake
        self.mount_id = mount_id
        self.network = network
        self.clock = clock
        self.opened: dict[str, int] = {}
        self.writes = 0
        self._changed = trio.Event()

    def read(self, manifest: str) -> None:
        """A version with this manifest was opened for reading."""
        now = self.clock()
        if now - self.opened.get(manifest, -REFRESH_NS - 1) > REFRESH_NS:
            self.opened[manifest] = now
            self._changed.set()

    async def run(self) -> None:
        while True:
            await self._changed.wait()
            await trio.sleep(DEBOUNCE)
            self._changed = trio.Event()
            now = self.clock()
            self.opened = {manifest: when for manifest, when in self.opened.items() if when > now - keeps.HOLD_NS}
            try:
                await trio.to_thread.run_sync(keeps.put_holds, self.lake.store, self.mount_id, dict(self.opened),
                                              now, limiter=self.network)
                self.writes += 1
            except StoreError as error:
                log.warning("could not record the versions this mount reads (%s); will try again", error)
                self._changed.set()
                await trio.sleep(5)
