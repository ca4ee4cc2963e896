"""One mount's object graph, built in one place: the daemon serves it through FUSE, tests drive it
without a kernel. Collaborators and callbacks go in through constructors; nothing is re-wired
afterwards.

    store -> lake -> LakeReplay (what this mount knows of the lake's namespace)
    journal, staging, chunk cache (the cache dir)
    engine: fetcher, spill, uploader (chunks, prefix rounds, publisher), evictor, behind `Engine`
    files: the file system, which asks the engine only through `Engine`
    following: the follower fetches, the file system reconciles, the kernel forgets, snapshots fold

News goes up as return values: the follower returns what it read and `Following` (here, above both
layers) hands it to the file system; the publisher adds this mount's own segments to the replay, a
lake-level object below both.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ckptfs.cache.chunkcache import ChunkCache
from ckptfs.cache.journal import Journal
from ckptfs.cache.staging import Staging
from ckptfs.engine.evictor import Evictor
from ckptfs.engine.fetcher import Fetcher
from ckptfs.engine.follower import Follower
from ckptfs.engine.holds import Holds
from ckptfs.engine.interface import Engine
from ckptfs.engine.scheduled_gc import ScheduledGc
from ckptfs.engine.snapshots import SNAPSHOT_SEGMENTS, Snapshots
from ckptfs.engine.spill import Spill
from ckptfs.engine.uploader import Uploader
from ckptfs.files import FileSystem
from ckptfs.files.remote import Invalidations
from ckptfs.lake import Lake
from ckptfs.lake.gc import read_collected
from ckptfs.lake.keeps import read_tags
from ckptfs.lake.replay import LakeReplay
from ckptfs.store import StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """What a mount's configuration decides about its object graph."""
    durability: str = "local"
    upload_round_bytes: int = 0  # upload while writing: 0 off (engine/prefix.py)
    staging_budget: int | None = None  # bytes of staging files; None: no evictor, no backpressure
    refresh_interval: float = 5.0  # seconds between reads of what other mounts published; 0: on demand
    snapshot_segments: int = SNAPSHOT_SEGMENTS
    # The wall clock that garbage collection's leases compare with the lake's marks (engine/leases.py);
    # tests of GC pass a clock they move.
    clock: Callable[[], int] = time.time_ns
    gc_every_s: float = 0  # run garbage collection this often (engine/scheduled_gc.py); 0: never


async def _kernel_forgets_nothing(stale: Invalidations) -> None:
    return None


class Following:
    """How the mount follows the lake: the follower fetches what other mounts published, the file
    system brings its tree in line, the kernel forgets what changed (`forget`, given by the FUSE
    adapter), then the cursors move; after a sweep, snapshots fold and maybe write one.

    Looks at the lake run side by side; what they found is applied one look at a time. A refresh
    asked for while another look is out (the periodic refresh, a second `ckptfs latest`) starts its
    own listing at once: waiting for the other look to end first cost up to a whole sweep more (a
    sweep is rounds of requests at the store's first-byte latency). A segment both looks read is
    applied once (LakeReplay.add skips the segments it knows) and the cursors only move forward."""

    def __init__(self, follower: Follower, snapshots: Snapshots, files: FileSystem, *, interval: float,
                 forget: Callable[[Invalidations], Awaitable[None]] = _kernel_forgets_nothing) -> None:
        self.follower = follower
        self.snapshots = snapshots
        self.files = files
        self.interval = interval
        self.forget = forget
        self._lock = trio.Lock()  # what a look found is applied one look at a time
        self.last_forced_snapshot: dict[str, Any] = {}  # the answer to the last `ckptfs snapshot`
        self._collected_records: set[str] = set()  # gc/collected/ records read (they never change)
        self._tags_asked = self._tags_shown = 0  # reads of the tags begun, and the newest one shown
        # Sweeps whose fold and snapshot are still to do, for the writer `run` starts: the newest
        # sweep's start covers the older ones. None while no writer runs (refresh does it inline).
        self._to_fold: trio.MemorySendChannel[int] | None = None

    async def refresh(self, *, sweep: bool = False) -> dict[str, Any]:
        async with trio.open_nursery() as nursery:
            if sweep:  # asked for (`ckptfs refresh`, `latest`: a restart waits): read them meanwhile
                nursery.start_soon(self._read_records)
            fetched = await self.follower.fetch(sweep=sweep)
        async with self._lock:
            self.files.remote.apply(fetched.events)
            self.files.commit(durable=True)
            await self.forget(self.files.remote.take_invalidations())
            result = self.follower.advance(fetched)
        if result["swept_at_ns"] is not None:
            await self.fold(result["swept_at_ns"])
            if not sweep:  # the periodic refresh's sweep every few minutes: the records after it
                await self._read_records()
        return result

    async def fold(self, swept_at_ns: int) -> None:
        """After a sweep that started at `swept_at_ns`: fold, and write a snapshot if the lake's
        newest is far behind (engine/snapshots.py). Neither changes what this mount shows, and a
        snapshot's PUT and the prune after it take seconds on a large lake (the soak's fresh mount
        waited 66 s in `latest`): the writer task `run` starts does them; without one, here."""
        if self._to_fold is not None:
            self._to_fold.send_nowait(swept_at_ns)
        else:
            await self.snapshots.swept(swept_at_ns)

    async def _read_records(self) -> None:
        """What GC collected (it leaves .versions) and the tags: read at start, on `ckptfs refresh`
        and every 5 minutes, both at once, and shown as soon as read (they do not depend on the log).
        Each is a LIST and GETs; read one after the other and after the logs, they made `ckptfs
        refresh` (and `latest`, which refreshes first) six rounds of requests at S3's first-byte
        latency, ~1 s on the S3 model. A record read is never read again (they never change), so
        what it says is shown even if the look it was read beside fails."""
        store = self.follower.lake.store
        view = self.files.tree.view

        async def collected() -> None:
            view.collected.update(await trio.to_thread.run_sync(
                read_collected, store, self._collected_records, limiter=self.follower.network))

        async def tags() -> None:
            self._tags_asked += 1
            asked = self._tags_asked
            found = await trio.to_thread.run_sync(read_tags, store, limiter=self.follower.network)
            if asked > self._tags_shown:  # a read that began after this one may have answered first
                self._tags_shown = asked
                view.past.tags = {tag.name: (tag.root, dict(tag.entries)) for tag in found}

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collected)
            nursery.start_soon(tags)

    async def snapshot(self) -> dict[str, Any]:
        """`ckptfs snapshot`: a sweep, then a snapshot whatever the threshold."""
        swept = await self.refresh(sweep=True)
        self.last_forced_snapshot = await self.snapshots.swept(swept["swept_at_ns"], force=True)
        return self.last_forced_snapshot

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh every `interval` seconds (never if 0), and fold and snapshot after each sweep
        in a task of its own, until cancelled."""
        send, receive = trio.open_memory_channel[int](math.inf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._fold_swept, receive)
            self._to_fold = send
            try:
                task_status.started()
                await self._refresh_periodically()
            finally:
                self._to_fold = None

    async def _fold_swept(self, receive: trio.MemoryReceiveChannel[int]) -> None:
        async with receive:
            async for swept_at_ns in receive:
                while True:  # sweeps queued meanwhile: the newest covers them
                    try:
                        swept_at_ns = max(swept_at_ns, receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                try:
                    await self.snapshots.swept(swept_at_ns)
                except Exception as error:  # noqa: BLE001 - the next sweep folds and tries again
                    if not isinstance(error, (StoreError, OSError)):
                        log.exception("unexpected failure folding or writing a snapshot")
                    log.warning("could not fold or snapshot the namespace: %s", error)

    async def _refresh_periodically(self) -> None:
        if self.interval <= 0:
            await trio.sleep_forever()
        while True:
            await trio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception as error:  # noqa: BLE001 - following must survive anything; it retries
                if not isinstance(error, (StoreError, OSError)):
                    log.exception("unexpected failure following the lake")
                self.follower.failed(error)
                log.warning("following the lake: %s (next try in %.0f s)", error, self.interval)

    def figures(self) -> dict[str, Any]:
        follower, snapshots = self.follower, self.snapshots
        return {"refresh_interval_s": self.interval, "refreshes": follower.refreshes,
                "refresh_list_requests": follower.lists, "refresh_get_requests": follower.gets,
                "remote_events": follower.events_applied,
                "last_refresh_s": round(follower.last_refresh_s, 3) if follower.last_refresh_s is not None else None,
                "refresh_error": follower.last_error,
                "snapshots_written": snapshots.written, "last_snapshot": snapshots.last_written,
                "events_in_memory": len(snapshots.replay.events), "events_folded": snapshots.folded}


@dataclass
class Mount:
    mount_id: str
    lake: Lake
    journal: Journal
    staging: Staging
    replay: LakeReplay
    fetcher: Fetcher
    uploader: Uploader
    evictor: Evictor | None
    engine: Engine
    files: FileSystem
    follower: Follower
    snapshots: Snapshots
    following: Following
    start_reading: dict[str, Any] = field(default_factory=dict)  # what it read of the lake at start
    holds: Holds | None = None  # what it has opened for reading, told to the lake (GC keeps it)
    scheduled_gc: ScheduledGc | None = None

    def status(self) -> dict[str, Any]:
        gc = ({"gc_every_s": self.scheduled_gc.every_s, "gc_runs": self.scheduled_gc.runs,
               "gc_last": self.scheduled_gc.last} if self.scheduled_gc is not None else {})
        return {**self.files.control.status(), **self.following.figures(), **self.start_reading, **gc}

    async def run_engine(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The engine's tasks (fetcher, uploads and publication, eviction) until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.fetcher.run)
            await nursery.start(self.uploader.run)
            if self.evictor is not None:
                nursery.start_soon(self.evictor.run)
            if self.holds is not None:
                nursery.start_soon(self.holds.run)
            if self.scheduled_gc is not None:
                nursery.start_soon(self.scheduled_gc.run)
            task_status.started()


def assemble(lake: Lake, journal: Journal, staging: Staging, chunks: ChunkCache, *, mount_id: str,
             settings: Settings = Settings(),
             forget: Callable[[Invalidations], Awaitable[None]] = _kernel_forgets_nothing,
             start_reading: dict[str, Any] | None = None) -> Mount:
    """Build a mount's object graph on an open lake and a prepared cache dir (cache/rebuild.py).
    Following starts once the caller has read the lake: `mount.files.remote.start_from` and
    `mount.follower.start_from`."""
    replay = LakeReplay(mount_id, late_ns=lake.late_ns)
    fetcher = Fetcher(lake, chunks, on_manifest=journal.learn_manifest)
    spill = Spill(journal, staging, fetcher)
    evictor = None
    if settings.staging_budget:
        evictor = Evictor(journal, staging, settings.staging_budget, forget=spill.forget)
    uploader = Uploader(journal, staging, lake, mount_id, round_bytes=settings.upload_round_bytes, spill=spill,
                        on_committed=evictor.committed if evictor is not None else lambda version: None,
                        on_uncommitted=evictor.uncommitted if evictor is not None else lambda version: None,
                        on_published=lambda *segment: files.remote.own_published(*segment),  # made below
                        clock=settings.clock)
    holds = Holds(lake, mount_id, uploader.network, clock=settings.clock)
    engine = Engine(uploader, fetcher, evictor=evictor, spill=spill, holds=holds)
    files = FileSystem(journal, staging, engine, replay, mount_id=mount_id, durability=settings.durability,
                       fold_ns=lake.fold_ns)
    follower = Follower(lake, mount_id, replay)
    snapshots = Snapshots(lake, replay, mount_id, follower.network, every=settings.snapshot_segments)
    following = Following(follower, snapshots, files, interval=settings.refresh_interval, forget=forget)
    return Mount(mount_id, lake, journal, staging, replay, fetcher, uploader, evictor, engine, files, follower,
                 snapshots, following, dict(start_reading or {}), holds,
                 ScheduledGc(lake, settings.gc_every_s) if settings.gc_every_s > 0 else None)
