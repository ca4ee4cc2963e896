"""The publisher: the journal's outbox becomes log segments in the lake, strictly in outbox order,
stopping at the first event whose version is not committed yet. So chunks come before the manifest,
the manifest before the event that publishes it, and events keep the mount's close/rename order.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable

import trio

from ckptfs.cache.journal import COMMITTED, Journal
from ckptfs.engine.progress import Progress
from ckptfs.errors import CkptfsError
from ckptfs.lake import Lake
from ckptfs.lake.manifest import encode_path
from ckptfs.store import StoreError

log = logging.getLogger(__name__)
SEGMENT_EVENTS = 1000
# How long ready changes wait for others to share their segment, unless something waits for all of
# them (sync, an fsync with remote durability, unmount) or a segment's worth is ready. Without it,
# files closed one by one made one segment each: 10,000 small files, 9,998 segments for every
# starting mount to read.
PUBLISH_LINGER = 0.5


class Publisher:
    def __init__(self, journal: Journal, lake: Lake, mount_id: str, progress: Progress, network: trio.CapacityLimiter,
                 on_error: Callable[[str], None],
                 on_published: Callable[[int, list[dict], int], None] = lambda seq, events, published_ns: None,
                 recheck: Callable[[list[int]], Awaitable[bool]] | None = None) -> None:
        self.journal = journal
        self.lake = lake
        self.mount_id = mount_id
        self.progress = progress
        self.network = network
        self.on_error = on_error
        # Told of each segment as it leaves the outbox (seq, raw events, publication time): the
        # follower's replay has this mount's events in their place from that moment, with no window
        # where they are neither pending here nor known to have been published (files/remote.py).
        self.on_published = on_published
        # Asked before a new batch is chosen whether its versions may be published (GC's writer rule,
        # engine/leases.py); False: not yet.
        self.recheck = recheck
        self._hurry_upto = -1  # outbox seqs up to this one are waited for
        self._wake = trio.Event()  # set when an event is queued or committed, or a wait begins

    def hurry(self, upto: int) -> None:
        """Something waits for the events up to outbox seq `upto`: publish them as soon as all are ready."""
        self._hurry_upto = max(self._hurry_upto, upto)
        self._wake.set()

    def poke(self) -> None:
        """An event is ready to publish (or its version was just committed)."""
        self._wake.set()

    async def wait_published(self, upto: int) -> None:
        """Return once every outbox event with seq <= upto is published in the lake."""
        self.hurry(upto)
        while self.outbox_head() <= upto:
            await self.progress.wait()

    def outbox_head(self) -> int:
        """The lowest outbox seq not yet published (everything below it is in the lake)."""
        rows = self.journal.outbox(limit=1)
        return rows[0][0] if rows else self.journal.outbox_tail() + 1

    async def _until_due(self) -> None:
        """Wait until a segment is due: one a crash left half-published; a segment's worth of ready
        events; every event someone waits for ready; or ready events that have waited PUBLISH_LINGER.
        While uploads fall behind a `sync`, commits arrive one by one: publishing each at once made a
        segment per file (200 for 300 files), so a waiter only cuts the lingering short once all it
        waits for is ready."""
        ready_since = None
        while self.journal.get_meta("pending_segment") is None:
            ready, blocked = self.journal.outbox_ready()
            if ready:
                waited_for_ready = self.outbox_head() <= self._hurry_upto and (blocked is None
                                                                                or blocked > self._hurry_upto)
                if ready >= SEGMENT_EVENTS or waited_for_ready:
                    return
                ready_since = trio.current_time() if ready_since is None else ready_since
                if trio.current_time() >= ready_since + PUBLISH_LINGER:
                    return
            self._wake = trio.Event()
            with trio.move_on_at(ready_since + PUBLISH_LINGER if ready_since is not None else math.inf):
                await self._wake.wait()

    async def run(self) -> None:
        while True:
            await self._until_due()
            try:
                published = await self._publish_once()
            except Exception as error:  # noqa: BLE001 - the publisher must survive anything
                if not isinstance(error, (StoreError, CkptfsError)):
                    log.exception("unexpected failure publishing namespace events")
                self.on_error(f"publishing namespace events: {error}")
                await trio.sleep(5)
                continue
            if published:
                self.progress.notify()

    async def _publish_once(self) -> bool:
        pending = self.journal.get_meta("pending_segment")
        if pending is not None:
            seq, upto, *published = json.loads(pending)
            rows = self.journal.outbox(upto=upto)
            published_ns = published[0] if published else self._publication_time(rows)
        else:
            rows = []
            for row in self.journal.outbox(limit=SEGMENT_EVENTS):
                if row[2] is not None:
                    version = self.journal.version(row[2])
                    if version is None or version.state != COMMITTED:
                        break
                rows.append(row)
            if not rows:
                return False
            if self.recheck is not None and not await self.recheck([row[2] for row in rows if row[2] is not None]):
                return False
            seq, upto = int(self.journal.get_meta("next_segment") or 0), rows[-1][0]
            published_ns = self._publication_time(rows)
            # Remember the exact batch first: after a crash the same seq must carry the same events.
            self.journal.set_meta("pending_segment", json.dumps([seq, upto, published_ns]))
            self.journal.commit(durable=True)
        events = [self._complete(record, version) for _, record, version in rows]
        await trio.to_thread.run_sync(self.lake.append_log, self.mount_id, seq, events, published_ns,
                                      limiter=self.network)
        self.journal.drop_outbox(upto)
        self.on_published(seq, events, published_ns)
        self.journal.set_meta("last_published_ns", str(published_ns))
        self.journal.set_meta("next_segment", str(seq + 1))
        self.journal.delete_meta("pending_segment")
        self.journal.add_counter("events_published", len(events))
        self.journal.add_counter("segments_published", 1)
        self.journal.commit(durable=True)
        return True

    def _publication_time(self, rows: list) -> int:
        """The segment's publication time: the wall clock, but after its events and after this
        mount's previous segment, so that placement (events.placement) keeps the mount's order."""
        newest_event = max((record["time_ns"] for _, record, _ in rows), default=0)
        previous = int(self.journal.get_meta("last_published_ns") or 0)
        return max(time.time_ns(), newest_event, previous + 1)

    def _complete(self, record: dict, version_id: int | None) -> dict:
        if version_id is None:
            return record
        version = self.journal.version(version_id)
        assert version is not None and version.manifest is not None
        return {**record, "manifest": version.manifest, "size": version.size, "mode": version.mode,
                "mtime_ns": version.mtime_ns, "path": record.get("path", encode_path(version.path or b""))}

