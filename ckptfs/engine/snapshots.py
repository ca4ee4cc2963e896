"""Writing namespace snapshots (lake/snapshot.py) and keeping this mount's memory bounded.

After each sweep (a full listing of every mount's log, engine/follower.py) this mount knows every
segment published before the sweep started, so no event can still arrive placed before
    horizon = sweep start - the lake's late_publish_s - its max_clock_skew_s.
It then folds the events placed before the horizon into its base tree (lake/replay.py), and if
the newest snapshot in the lake is more than `every` segments behind what it has read, it writes
one: its base tree, the events after the horizon and its cursors. Any mount may write one; each
waits for a threshold drawn between `every` and twice that, so that the mounts of a job do not all
write the same snapshot at once. A writer keeps the newest two snapshots (a reader may be reading
the older one) and deletes older ones, and the feed markers that are older than the horizon.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import trio

from ckptfs.lake import Lake
from ckptfs.lake.replay import LakeReplay
from ckptfs.lake.snapshot import Snapshot

log = logging.getLogger(__name__)
SNAPSHOT_SEGMENTS = 100  # write a snapshot when the newest one is this many segments (or up to 2x) behind
KEEP_SNAPSHOTS = 2


class Snapshots:
    def __init__(self, lake: Lake, replay: LakeReplay, mount_id: str, network: trio.CapacityLimiter, *,
                 every: int = SNAPSHOT_SEGMENTS) -> None:
        self.lake = lake
        self.replay = replay
        self.mount_id = mount_id
        self.network = network
        self.threshold = random.randint(every, 2 * every)
        self.written = 0
        self.last_written: str | None = None
        self.folded = 0
        self._lock = trio.Lock()

    async def swept(self, started_ns: int, *, force: bool = False) -> dict[str, Any]:
        """A sweep that started at `started_ns` (wall clock) has been applied."""
        async with self._lock:
            horizon = started_ns - self.lake.late_ns - self.lake.skew_ns
            self.folded += self.replay.compact(horizon)
            existing = await trio.to_thread.run_sync(self.lake.snapshots, limiter=self.network)
            covered = sum(seq + 1 for seq in self.replay.covered.values())
            behind = covered - (existing[-1][2] if existing else 0)
            if not force and behind < self.threshold:
                return {"written": None, "segments_behind": behind}
            if self.replay.segments:
                # Segments read out of order leave a gap that cursors cannot describe: next sweep.
                return {"written": None, "segments_behind": behind, "why": "segments read out of order"}
            cursors = dict(self.replay.covered)
            tail = [change for change in self.replay.events if change.seq <= cursors.get(change.mount, -1)]
            value = Snapshot(max(horizon, self.replay.horizon_ns or 0), cursors, self.replay.base, tail)
            started = time.monotonic()
            # The base changes only in compact(), under this lock: encoding it in a thread is safe.
            key = await trio.to_thread.run_sync(self.lake.put_snapshot, value, self.mount_id, limiter=self.network)
            self.written += 1
            self.last_written = key
            log.info("wrote namespace snapshot %s (%d entries, %d segments, %d events after its horizon) in %.1f s",
                     key, len(value.tree.entries) - 1, value.segments, len(tail), time.monotonic() - started)
            await trio.to_thread.run_sync(self._prune, existing, horizon, limiter=self.network)
            # `entries`: the tree the snapshot gives a starting mount (its folded base and its tail
            # replayed), not the base alone (a young lake's base is empty: "0 entries" misled).
            return {"written": key, "segments": value.segments, "entries": len(self.replay.tree().entries) - 1,
                    "folded_entries": len(value.tree.entries) - 1, "tail_events": len(tail),
                    "seconds": round(time.monotonic() - started, 3)}

    def _prune(self, existing: list[tuple[int, str, int, str]], horizon_ns: int) -> None:
        """Older snapshots beyond the newest KEEP_SNAPSHOTS, and feed markers before the horizon."""
        self.lake.store.delete_many([key for _, _, _, key in existing[:max(0, len(existing) + 1 - KEEP_SNAPSHOTS)]])
        self.lake.prune_feed(horizon_ns)
