"""The one seam between the file system layer (`ckptfs/files`) and the engine: everything the files
ask of uploads, reads from the lake and the cache budget, and nothing else. The file system never
reaches into the uploader, the fetcher, the evictor or spilling; news from the engine reaches it as
return values. Built by the assembly (ckptfs/mount.py) from the engine's parts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from ckptfs.cache.journal import Version
from ckptfs.engine.evictor import Evictor
from ckptfs.engine.fetcher import Fetcher
from ckptfs.engine.holds import Holds
from ckptfs.engine.spill import Spill, spill_threshold
from ckptfs.engine.uploader import Uploader


class Engine:
    def __init__(self, uploader: Uploader, fetcher: Fetcher, *, evictor: Evictor | None = None,
                 spill: Spill | None = None, holds: Holds | None = None) -> None:
        self._uploader = uploader
        self._holds = holds
        self._fetcher = fetcher
        self._evictor = evictor
        self._spill = spill
        self.limit_bytes = evictor.limit_bytes if evictor is not None else None  # the staging budget
        self._spill_at = spill_threshold(evictor.limit_bytes) if evictor is not None else 0
        self.backpressure_waits = 0
        self.backpressure_seconds = 0.0
        self.remote_read_bytes = 0  # bytes of committed, unstaged versions read

    def read_opened(self, manifest: str) -> None:
        """A committed version was opened for reading: hold it in the lake (engine/holds.py)."""
        if self._holds is not None:
            self._holds.read(manifest)

    # -- uploads and publication --------------------------------------------------------------
    def submit(self, version: int) -> None:
        """A version was sealed: upload it, then publish its `put`."""
        self._uploader.submit(version)

    def event_queued(self) -> None:
        """An outbox event without a version (mkdir, rename, unlink) is ready to publish."""
        self._uploader.poke()

    def hurry(self, upto: int) -> None:
        """Something waits for the outbox events up to `upto`: publish them once all are ready."""
        self._uploader.publisher.hurry(upto)

    async def wait_published(self, upto: int) -> None:
        await self._uploader.wait_published(upto)

    def outbox_head(self) -> int:
        return self._uploader.outbox_head()

    # -- the staging file of a version being written ------------------------------------------
    def written(self, version: int, offset: int, length: int) -> None:
        self._uploader.prefix.written(version, offset, length)

    def truncated(self, version: int, size: int) -> None:
        self._uploader.prefix.truncated(version, size)

    def forget(self, version: int) -> None:
        """A version's staging file is gone: drop what was uploaded or spilled of it early."""
        self._uploader.prefix.forget(version)

    async def before_change(self, version: int, offset: int) -> bool:
        """Before a write or truncate at `offset`: bring back a spilled prefix it reaches into.
        Returns whether it awaited (the caller looks at the version again)."""
        return await self._uploader.prefix.before_change(version, offset)

    async def make_room(self, needed: int, staged_bytes: Callable[[], int]) -> None:
        """Backpressure: evict clean data, spill files being written (engine/spill.py), then wait for
        uploads to make more data clean or spilled. `staged_bytes()` is the staging total now.

        Never fails the write: if only dirty data that no upload will clean or spill is left (files
        written out of order, or rewritten below their spilled prefix), the write goes ahead over
        budget rather than deadlock.
        """
        if self._evictor is None or staged_bytes() + needed <= self._spill_at:
            return
        started = None
        while True:
            # Clean data goes first: the file being written is the one most likely read next.
            self._evictor.evict(self._spill_at - needed)
            wanted = staged_bytes() + needed
            if wanted <= self._spill_at:
                break
            spilling = self._uploader.prefix.relieve()
            if wanted <= self._evictor.limit_bytes or not (spilling or self._uploader.busy()):
                break
            if started is None:
                started = time.monotonic()
                self.backpressure_waits += 1
            with trio.move_on_after(1):
                await self._uploader.wait_for_progress()
        if started is not None:
            self.backpressure_seconds += time.monotonic() - started

    # -- reads --------------------------------------------------------------------------------
    async def read(self, manifest: str, offset: int, size: int, *, sequential: bool) -> bytes | memoryview:
        data = await self._fetcher.read(manifest, offset, size, sequential=sequential)
        self.remote_read_bytes += len(data)
        return data

    @property
    def fetched_bytes(self) -> int:
        """Bytes the fetcher has read from the lake (what S3 bills as egress out of its region)."""
        return self._fetcher.fetched_bytes

    async def read_all_into(self, manifest: str, fd: int) -> None:
        await self._fetcher.read_all_into(manifest, fd)

    async def prefetch(self, manifests: list[str], progress: dict[str, int]) -> None:
        await self._fetcher.prefetch(manifests, progress)

    @property
    def spills(self) -> bool:
        return self._spill is not None

    async def read_spilled(self, version: Version, offset: int, size: int, *, sequential: bool) -> bytes | memoryview:
        assert self._spill is not None
        return await self._spill.read(version, offset, size, sequential=sequential)

    async def fill_spilled(self, version: Version, fd: int) -> None:
        """Write the punched prefix of a spilled version into a copy of its staging file."""
        if self._spill is not None:
            await self._spill.fill(version, fd)

    def used(self, version: int) -> None:
        """A committed version's staging file was read: keep it longest."""
        if self._evictor is not None:
            self._evictor.touch(version)

    # -- figures ------------------------------------------------------------------------------
    def pending_of(self, version: Version) -> int:
        return self._uploader.pending_of(version)

    def pending_bytes(self) -> int:
        return self._uploader.pending_bytes()

    def early_bytes(self, version: int) -> int:
        return self._uploader.prefix.early_bytes(version)

    @property
    def round_bytes(self) -> int:
        return self._uploader.prefix.round_bytes

    @property
    def last_error(self) -> str | None:
        return self._uploader.last_error

    def store_health(self) -> dict[str, Any]:
        store = self._uploader.lake.store
        retries = getattr(store, "retries", 0)
        last_error_time = getattr(store, "last_error_time", None)
        last_success_time = getattr(store, "last_success_time", None)
        retrying = bool(last_error_time and (last_success_time is None or last_error_time > last_success_time))
        return {"store_retries": retries, "store_retrying": retrying,
                "store_requests": dict(getattr(store, "requests", {})),
                "store_errors": dict(getattr(store, "errors", {})),
                "last_store_error": getattr(store, "last_error", None) if retrying else None}
