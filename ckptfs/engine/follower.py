"""Following the lake: what other mounts publish reaches this mount's tree within a refresh interval.

A periodic refresh LISTs the change feed (`feed/`, one empty marker per published segment, keyed by
the writer's clock) from a little before the newest marker it saw; for the mounts with new segments
it LISTs their log from the segment after the last one read (StartAfter), GETs the new segments in
parallel and hands their validated events to `apply` (files/remote.py); then the cursors move. An
idle refresh is one LIST. A sweep (at start, on `ckptfs refresh`, and every SWEEP_SECONDS) lists
`mounts/` and every mount's log instead, so a marker that a skewed clock placed before the
look-back window is found within minutes.
`refresh()` is also what `ckptfs refresh` and a starting mount wait for. The cursors start where
the starting mount's reading of the lake stopped (its snapshot and the segments after it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ckptfs.lake import Lake
from ckptfs.lake.events import Event
from ckptfs.store import StoreError

log = logging.getLogger(__name__)
SWEEP_SECONDS = 300  # a full listing of every mount's log at least this often
FEED_LOOKBACK_NS = 120 * 10**9  # markers written up to this long before the newest one seen are read again


class Follower:
    def __init__(self, lake: Lake, mount_id: str,
                 apply: Callable[[list[Event]], Awaitable[None]], *, interval: float = 5.0,
                 network_threads: int = 8) -> None:
        self.lake = lake
        self.mount_id = mount_id
        self.cursors: dict[str, int] = {}  # mount -> last seq read
        self.apply = apply
        self.interval = interval
        self.network = trio.CapacityLimiter(network_threads)
        self._lock = trio.Lock()
        self.refreshes = 0
        self.lists = 0
        self.gets = 0
        self.events_applied = 0
        self.last_refresh_s: float | None = None
        self.last_error: str | None = None
        self._last_sweep: float | None = None  # monotonic time of the last full listing
        self._feed_from = 0  # feed markers after this time (ns, writers' clocks) are still to look at
        # Told after each sweep, with the wall-clock time it started: every segment published
        # before then has been applied (engine/snapshots.py folds and snapshots up to there).
        self.on_swept: Callable[[int], Awaitable[Any]] | None = None

    def start_from(self, cursors: dict[str, int], listed_at_ns: int) -> None:
        """The starting mount read every log up to `cursors`, listing them from `listed_at_ns` (wall
        clock) on (Lake.read_log): that counts as a sweep."""
        self.cursors = dict(cursors)
        self._last_sweep = time.monotonic()
        self._feed_from = max(self._feed_from, listed_at_ns - FEED_LOOKBACK_NS)

    def published(self, seq: int) -> None:
        """This mount published segment `seq` (its events reached the replay directly)."""
        self.cursors[self.mount_id] = max(self.cursors.get(self.mount_id, -1), seq)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.interval <= 0:
            return
        while True:
            await trio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception as error:  # noqa: BLE001 - the follower must survive anything; it retries
                if not isinstance(error, (StoreError, OSError)):
                    log.exception("unexpected failure following the lake")
                self.last_error = str(error)
                log.warning("following the lake: %s (next try in %.0f s)", error, self.interval)

    async def _mounts_to_read(self, sweep: bool) -> tuple[list[str], int | None]:
        """The mounts whose logs may have new segments: all of them on a sweep (and the time it
        started), else the ones the change feed names since the last look (one LIST)."""
        now_ns = time.time_ns()
        if sweep or self._last_sweep is None or time.monotonic() - self._last_sweep > SWEEP_SECONDS:
            found = await trio.to_thread.run_sync(self.lake.mounts, limiter=self.network)
            self.lists += 1
            self._last_sweep = time.monotonic()
            self._feed_from = max(self._feed_from, now_ns - FEED_LOOKBACK_NS)
            return sorted(set(found) | set(self.cursors) | {self.mount_id}), now_ns
        markers = await trio.to_thread.run_sync(self.lake.feed_after, self._feed_from, limiter=self.network)
        self.lists += 1
        if markers:
            self._feed_from = max(self._feed_from, max(when for when, _, _ in markers) - FEED_LOOKBACK_NS)
        return sorted({mount for _, mount, seq in markers if seq > self.cursors.get(mount, -1)}), None

    async def refresh(self, *, sweep: bool = False) -> dict[str, Any]:
        """Apply what other mounts published. With `sweep` (what `ckptfs refresh` and a starting
        mount ask for), everything published before the call: every mount's log is listed. Without
        it (the periodic refresh), what the change feed shows, with a sweep every few minutes in
        case a writer's clock put its markers before the feed's look-back window."""
        result = await self._refresh(sweep)
        if result["swept_at_ns"] is not None and self.on_swept is not None:
            await self.on_swept(result["swept_at_ns"])
        return result

    async def _refresh(self, sweep: bool) -> dict[str, Any]:
        async with self._lock:  # a refresh asked for while one runs waits for it and runs anew
            started = time.monotonic()
            cursors = dict(self.cursors)
            others, swept_at = await self._mounts_to_read(sweep)
            new: dict[str, list[tuple[int, str]]] = {}

            async def list_one(mount: str) -> None:
                after = cursors.get(mount, -1)
                segments = await trio.to_thread.run_sync(
                    lambda: [(seq, key) for _, seq, key in self.lake.segments(mount, after)], limiter=self.network)
                self.lists += 1
                if segments:
                    new[mount] = segments

            async with trio.open_nursery() as nursery:
                for mount in others:
                    nursery.start_soon(list_one, mount)
            fetched: list[Event] = []

            async def get_one(mount: str, seq: int, key: str) -> None:
                fetched.extend(await trio.to_thread.run_sync(self.lake.read_segment, mount, seq, key,
                                                             limiter=self.network))
                self.gets += 1

            async with trio.open_nursery() as nursery:
                for mount, segments in new.items():
                    for seq, key in segments:
                        nursery.start_soon(get_one, mount, seq, key)
            await self.apply(fetched)
            for mount, segments in new.items():
                self.cursors[mount] = max([self.cursors.get(mount, -1)] + [seq for seq, _ in segments])
            self.refreshes += 1
            self.events_applied += len(fetched)
            self.last_refresh_s = time.monotonic() - started
            self.last_error = None
            return {"mounts": len(others), "segments": sum(len(s) for s in new.values()), "events": len(fetched),
                    "seconds": round(self.last_refresh_s, 3), "swept_at_ns": swept_at}
