"""Garbage collection on a schedule, run by a mount (`ckptfs mount --gc-every 1d`): every mount of a
job may be given it; the lake's gc lock lets one run at a time and the others skip that round. A run
happens in a worker thread (lake/gc.py is synchronous) and never holds anything a save waits for."""

from __future__ import annotations

import logging
import random
from typing import Any

import trio

from ckptfs.errors import CkptfsError
from ckptfs.lake import Lake
from ckptfs.lake.gc import GarbageCollector
from ckptfs.lake.gclock import GcBusy

log = logging.getLogger(__name__)


class ScheduledGc:
    def __init__(self, lake: Lake, every_s: float) -> None:
        self.lake = lake
        self.every_s = every_s
        self.runs = 0
        self.last: dict[str, Any] | None = None  # the last run's report, or its error

    async def run(self) -> None:
        # The first run comes after a random part of the interval, so the mounts of a job that
        # start together do not all try at once.
        await trio.sleep(random.uniform(0.1, 1.0) * self.every_s)
        while True:
            try:
                report = await trio.to_thread.run_sync(GarbageCollector(self.lake).run)
                self.runs += 1
                self.last = report.to_json()
                log.info("gc: marked %d objects, deleted %d (%d bytes), repacked %d packs",
                         report.marked, report.deleted, report.deleted_bytes, report.repacked)
            except GcBusy as error:
                log.info("gc: skipped: %s", error)
            except CkptfsError as error:
                self.last = {"error": str(error)}
                log.warning("gc failed: %s (next run in %.0f s)", error, self.every_s)
            await trio.sleep(self.every_s)
