"""Following the lake: what other mounts publish reaches this mount's tree within a refresh interval.

A periodic refresh LISTs the change feed (`feed/`, one empty marker per published segment, keyed by
the writer's clock) from a little before the newest marker it saw; for the mounts with new segments
it LISTs their log from the segment after the last one read (StartAfter), GETs the new segments in
parallel and returns their validated events; the caller (ckptfs/mount.py) applies them to the tree
(files/remote.py) and the cursors move. An
idle refresh is one LIST. A sweep (at start, on `ckptfs refresh`, and every SWEEP_SECONDS) lists
`mounts/` and every mount's log instead, so a marker that a skewed clock placed before the
look-back window is found within minutes.
The cursors start where the starting mount's reading of the lake stopped (its snapshot and the
segments after it); this mount's own segments are never read back (they reach the replay as the
publisher writes them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import trio

from ckptfs.lake import Lake
from ckptfs.lake.events import Event
from ckptfs.lake.replay import LakeReplay

log = logging.getLogger(__name__)
SWEEP_SECONDS = 300  # a full listing of every mount's log at least this often
FEED_LOOKBACK_NS = 120 * 10**9  # markers written up to this long before the newest one seen are read again


@dataclass
class Fetched:
    """What one look at the lake found: the new segments' validated events, and where to move on to."""
    events: list[Event]
    segments: dict[str, list[int]]  # mount -> the seqs read
    mounts: int  # how many mounts' logs were listed
    swept_at_ns: int | None  # a sweep: the wall-clock time it started listing
    started: float  # monotonic time the look began


class Follower:
    def __init__(self, lake: Lake, mount_id: str, replay: LakeReplay, *, network_threads: int = 32) -> None:
        self.lake = lake
        self.mount_id = mount_id
        self.replay = replay  # this mount's own segments reach it as they are published, not by reading
        self.cursors: dict[str, int] = {}  # mount -> last seq read
        self.network = trio.CapacityLimiter(network_threads)
        self.refreshes = 0
        self.lists = 0
        self.gets = 0
        self.events_applied = 0
        self.last_refresh_s: float | None = None
        self.last_error: str | None = None
        self._last_sweep: float | None = None  # monotonic time of the last full listing
        self._feed_from = 0  # feed markers after this time (ns, writers' clocks) are still to look at

    def start_from(self, cursors: dict[str, int], listed_at_ns: int) -> None:
        """The starting mount read every log up to `cursors`, listing them from `listed_at_ns` (wall
        clock) on (Lake.read_log): that counts as a sweep."""
        self.cursors = dict(cursors)
        self._last_sweep = time.monotonic()
        self._feed_from = max(self._feed_from, listed_at_ns - FEED_LOOKBACK_NS)

    def _after(self, mount: str) -> int:
        """The last seq of a mount's log that needs no reading."""
        return max(self.cursors.get(mount, -1), self.replay.covered.get(mount, -1))

    def _sweep_due(self, sweep: bool) -> bool:
        return sweep or self._last_sweep is None or time.monotonic() - self._last_sweep > SWEEP_SECONDS

    async def _mounts_in_feed(self) -> list[str]:
        """The mounts the change feed names since the last look with segments not yet read (one LIST)."""
        markers = await trio.to_thread.run_sync(self.lake.feed_after, self._feed_from, limiter=self.network)
        self.lists += 1
        if markers:
            self._feed_from = max(self._feed_from, max(when for when, _, _ in markers) - FEED_LOOKBACK_NS)
        return sorted({mount for _, mount, seq in markers if seq > self._after(mount)})

    async def fetch(self, *, sweep: bool = False) -> Fetched:
        """What other mounts published since the last look. With `sweep` (what `ckptfs refresh` and a
        starting mount ask for), everything published before the call: every mount's log is listed.
        Without it (the periodic refresh), what the change feed shows, with a sweep every few minutes
        in case a writer's clock put its markers before the feed's look-back window. The caller
        applies the events, then calls `advance`. Looks may run side by side (each lists from the
        cursors as they are when it starts); the caller applies what they found one at a time.

        A sweep lists the logs of the mounts it knows while it lists `mounts/`, and the logs of the
        mounts that listing adds after it: one round of requests, not two, unless a mount is new
        (`ckptfs latest` sweeps first, and a restart waits for it)."""
        started = time.monotonic()
        new: dict[str, list[tuple[int, str]]] = {}
        listed: set[str] = set()

        async def list_one(mount: str) -> None:
            after = self._after(mount)
            segments = await trio.to_thread.run_sync(
                lambda: [(seq, key) for _, seq, key in self.lake.segments(mount, after)], limiter=self.network)
            self.lists += 1
            if segments:
                new[mount] = segments

        def list_each(nursery: trio.Nursery, mounts: list[str]) -> None:
            for mount in mounts:
                if mount not in listed:
                    listed.add(mount)
                    nursery.start_soon(list_one, mount)

        swept_at = None
        if self._sweep_due(sweep):
            swept_at = time.time_ns()
            async with trio.open_nursery() as nursery:
                list_each(nursery, sorted(set(self.cursors) | {self.mount_id}))
                found = await trio.to_thread.run_sync(self.lake.mounts, limiter=self.network)
                self.lists += 1
                list_each(nursery, sorted(found))
            self._last_sweep = time.monotonic()
            self._feed_from = max(self._feed_from, swept_at - FEED_LOOKBACK_NS)
        else:
            async with trio.open_nursery() as nursery:
                list_each(nursery, await self._mounts_in_feed())
        fetched: list[Event] = []

        async def get_one(mount: str, seq: int, key: str) -> None:
            fetched.extend(await trio.to_thread.run_sync(self.lake.read_segment, mount, seq, key,
                                                         limiter=self.network))
            self.gets += 1

        async with trio.open_nursery() as nursery:
            for mount, segments in new.items():
                for seq, key in segments:
                    nursery.start_soon(get_one, mount, seq, key)
        return Fetched(fetched, {mount: [seq for seq, _ in segments] for mount, segments in new.items()},
                       len(listed), swept_at, started)

    def failed(self, error: Exception) -> None:
        """A look at the lake failed; the next one tries again."""
        self.last_error = str(error)

    def advance(self, fetched: Fetched) -> dict[str, Any]:
        """The fetched events are applied: move the cursors on. Returns the figures of the look."""
        for mount, seqs in fetched.segments.items():
            self.cursors[mount] = max([self.cursors.get(mount, -1)] + seqs)
        self.refreshes += 1
        self.events_applied += len(fetched.events)
        self.last_refresh_s = time.monotonic() - fetched.started
        self.last_error = None
        return {"mounts": fetched.mounts, "segments": sum(len(s) for s in fetched.segments.values()),
                "events": len(fetched.events), "seconds": round(self.last_refresh_s, 3),
                "swept_at_ns": fetched.swept_at_ns}
