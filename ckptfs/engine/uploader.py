"""The upload pipeline: sealed versions -> chunks -> manifest -> published namespace events.

Two kinds of trio task. Version workers take sealed versions in seal order, cut their staging file
into content-defined chunks (worker thread), hash each chunk, skip chunks the lake already holds
(dedup), lz4-compress where it pays and PUT the rest with bounded concurrency, then PUT the manifest
and mark the version committed in the journal. The publisher turns the journal's outbox into log
segments strictly in outbox order, stopping at the first event whose version is not yet committed:
chunks before manifest, manifest before the event that publishes it, events in close/rename order.

Journal access happens only on the trio thread; threads do CPU and network work only.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

import trio

from ckptfs.cache.journal import COMMITTED, SEALED, Journal, Version
from ckptfs.cache.staging import Staging
from ckptfs.engine.prefix import DEFAULT_ROUND_BYTES, PrefixUploads
from ckptfs.engine.spill import Spill
from ckptfs.errors import CkptfsError
from ckptfs.lake import Lake, codec
from ckptfs.lake.chunker import Chunker, Cut
from ckptfs.lake.manifest import INLINE_LIMIT, Manifest, encode_path
from ckptfs.store import StoreError

log = logging.getLogger(__name__)
SEGMENT_EVENTS = 1000


class Uploader:
    def __init__(self, journal: Journal, staging: Staging, lake: Lake, mount_id: str, *,
                 network_threads: int = 16, version_workers: int = 2,
                 round_bytes: int = DEFAULT_ROUND_BYTES, spill: Spill | None = None) -> None:
        self.journal = journal
        self.staging = staging
        self.lake = lake
        self.mount_id = mount_id
        self.network = trio.CapacityLimiter(network_threads)
        self.cpu = trio.CapacityLimiter(max(1, os.cpu_count() or 1))
        self._chunk_slots = trio.Semaphore(network_threads * 2)  # bounds chunk bytes held in memory
        self._version_workers = version_workers
        self._queue: deque[int] = deque()
        self._queued: set[int] = set()
        self._work = trio.Event()
        self._publish = trio.Event()
        self._progress = trio.Event()
        self._inflight_chunks: dict[bytes, trio.Event] = {}
        self.active: set[int] = set()  # sealed versions a version worker is on
        self.sent: dict[int, int] = {}  # version id -> bytes of it in the lake so far
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.on_committed: Callable[[int], None] | None = None  # the evictor learns of clean data here
        self.prefix = PrefixUploads(self, round_bytes, spill)
        staging.observer = self.prefix

    # -- queueing and waiting -----------------------------------------------------------------
    def submit(self, version: int) -> None:
        if version not in self._queued:
            self._queue.append(version)
            self._queued.add(version)
            self._work.set()
        self._publish.set()

    def busy(self) -> bool:
        """Whether uploads are queued or running: more committed (evictable) data is coming."""
        return bool(self._queue) or bool(self.active)

    def poke(self) -> None:
        """An outbox event without a version (mkdir, rename, unlink) is ready to publish."""
        self._publish.set()

    def notify_progress(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def wait_for_progress(self) -> None:
        await self._progress.wait()

    async def wait_published(self, upto: int) -> None:
        """Return once every outbox event with seq <= upto is published in the lake."""
        while self.outbox_head() <= upto:
            await self.wait_for_progress()

    def outbox_head(self) -> int:
        """The lowest outbox seq not yet published (everything below it is in the lake)."""
        rows = self.journal.outbox(limit=1)
        return rows[0][0] if rows else self.journal.outbox_tail() + 1

    # -- tasks --------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for version in self.journal.versions_in_state(SEALED):
            self.submit(version.id)
        async with trio.open_nursery() as nursery:
            self.prefix.nursery = nursery
            for _ in range(self._version_workers):
                nursery.start_soon(self._version_worker)
            nursery.start_soon(self._publisher)
            task_status.started()

    async def _version_worker(self) -> None:
        while True:
            while not self._queue:
                self._work = trio.Event()
                await self._work.wait()
            version = self._queue.popleft()
            try:
                await self._upload_version(version)
            except Exception as error:  # noqa: BLE001 - a worker must survive anything; staged data stays
                if not isinstance(error, (StoreError, OSError, CkptfsError)):
                    log.exception("unexpected failure uploading version %x", version)
                self._record_error(f"upload of version {version:x}: {error}")
                self._queue.appendleft(version)
                await trio.sleep(5)
                continue
            finally:
                self.active.discard(version)
                self.sent.pop(version, None)
            self._queued.discard(version)
            self._publish.set()
            self.notify_progress()

    def _record_error(self, message: str) -> None:
        log.error("%s (staged data is kept; will retry)", message)
        self.last_error, self.last_error_time = message, time.time()

    async def _upload_version(self, identifier: int) -> None:
        version = self.journal.version(identifier)
        if version is None or version.state != SEALED:
            return
        self.active.add(identifier)
        early = await self.prefix.take(identifier, version.size)
        start = early.done if early is not None else 0
        if self.staging.holes.get(identifier, 0) > start:
            raise CkptfsError(f"version {identifier:x} has a punched prefix but no record of its chunks")
        self.sent[identifier] = start
        fd = os.open(self.staging.path(identifier), os.O_RDONLY)
        try:
            if version.size <= INLINE_LIMIT:
                inline = await trio.to_thread.run_sync(os.pread, fd, version.size, 0)
                entries: list[tuple[bytes, int]] = []
                new_bytes = stored_bytes = 0
            else:
                inline = None
                entries, new_bytes, stored_bytes = await self._cut_and_upload(identifier, fd, version.size, start)
                if early is not None:
                    entries = early.entries + entries
                    new_bytes += early.new_bytes
                    stored_bytes += early.stored_bytes
        finally:
            os.close(fd)
        if inline is not None and len(inline) != version.size:
            raise CkptfsError(f"staging file of version {identifier:x} is shorter than its size")
        manifest = Manifest(path=version.path or b"", size=version.size, mode=version.mode,
                            mtime_ns=version.mtime_ns, mount=self.mount_id, time_ns=version.sealed_ns or 0,
                            chunks=entries, inline=inline)
        manifest_id = await trio.to_thread.run_sync(self.lake.put_manifest, manifest, limiter=self.network)
        self.journal.update_version(identifier, state=COMMITTED, manifest=manifest_id, stored_bytes=stored_bytes)
        self.journal.add_counter("versions_committed", 1)
        self.journal.add_counter("logical_bytes", version.size)
        self.journal.add_counter("new_chunk_bytes", new_bytes)
        self.journal.add_counter("stored_bytes", stored_bytes)
        self.journal.commit(durable=True)
        if self.on_committed is not None:
            self.on_committed(identifier)
        log.info("committed version %x (%s, %d bytes, %d new)", identifier, version.path, version.size, new_bytes)

    async def _cut_and_upload(self, version: int, fd: int, size: int, start: int,
                              ) -> tuple[list[tuple[bytes, int]], int, int]:
        """Cut a sealed staging file from `start` in a thread while its first chunks already upload."""
        send, receive = trio.open_memory_channel[list[Cut]](4)
        failures: list[Exception] = []
        result: tuple[list[tuple[bytes, int]], int, int] = ([], 0, 0)

        async def cut() -> None:
            try:
                async with send:
                    await trio.to_thread.run_sync(_cut_file_into, send, fd, size, start,
                                                  self.lake.chunking_profile, limiter=self.cpu)
            except Exception as error:  # noqa: BLE001 - reported below, as the version's failure
                failures.append(error)

        # Errors are collected rather than raised inside the nursery, so one error leaves as itself.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cut)
            async with receive:
                try:
                    result = await self.upload_chunks(version, fd, receive)
                except Exception as error:  # noqa: BLE001 - as above
                    failures.append(error)
        if failures:
            raise failures[0]
        if sum(length for _, length in result[0]) != size - start:
            raise CkptfsError(f"cutting version {version:x} stopped short")
        return result

    async def upload_chunks(self, version: int, fd: int, cuts: list[Cut] | trio.MemoryReceiveChannel[list[Cut]],
                            slots: trio.Semaphore | None = None) -> tuple[list[tuple[bytes, int]], int, int]:
        """Hash, dedup and store the chunks at `cuts` of a staging file: (entries, new bytes, stored bytes).

        `cuts` is a list, or a channel of lists still being cut. `slots` bounds the chunks in hand at
        once (default: the uploader's, shared by all versions).
        """
        slots = slots or self._chunk_slots
        entries: dict[int, tuple[bytes, int]] = {}
        totals = [0, 0]  # new raw bytes, stored object bytes
        failures: list[Exception] = []

        async def one(index: int, cut: Cut) -> None:
            try:
                data = await trio.to_thread.run_sync(os.pread, fd, cut.length, cut.offset, limiter=self.cpu)
                if len(data) != cut.length:
                    raise CkptfsError(f"staging file of version {version:x} changed under the uploader")
                identifier = await trio.to_thread.run_sync(codec.chunk_id, data, limiter=self.cpu)
                entries[index] = (identifier, cut.length)
                while identifier in self._inflight_chunks:
                    await self._inflight_chunks[identifier].wait()
                if self.journal.chunk_known(identifier):
                    self.journal.add_counter("dedup_bytes", cut.length)
                else:
                    done = self._inflight_chunks[identifier] = trio.Event()
                    try:
                        stored = await trio.to_thread.run_sync(self._put_chunk, identifier, data,
                                                               limiter=self.network)
                        self.journal.add_known_chunks([identifier])
                    finally:
                        del self._inflight_chunks[identifier]
                        done.set()
                    if stored:
                        totals[0] += cut.length
                        totals[1] += stored
                    else:
                        self.journal.add_counter("dedup_bytes", cut.length)
                self.sent[version] = self.sent.get(version, 0) + cut.length
            except Exception as error:  # noqa: BLE001 - reported once, below, as the version's failure
                # One failed chunk fails the version: stop its siblings rather than let several
                # errors leave the nursery as a group.
                failures.append(error)
                nursery.cancel_scope.cancel()
            finally:
                slots.release()

        async with trio.open_nursery() as nursery:
            index = 0
            async for batch in _batches(cuts):
                for cut in batch:
                    if failures:
                        break
                    await slots.acquire()
                    nursery.start_soon(one, index, cut)
                    index += 1
                if failures:
                    break
        if failures:
            raise failures[0]
        return [entries[number] for number in range(index)], totals[0], totals[1]

    def _put_chunk(self, identifier: bytes, data: bytes) -> int:
        """Store a chunk unless the lake already has it; return the object bytes written (0 if it had)."""
        _, blob = codec.encode(data, identifier)
        return len(blob) if self.lake.put_chunk_object(identifier, blob) else 0

    async def _publisher(self) -> None:
        while True:
            try:
                published = await self._publish_once()
            except Exception as error:  # noqa: BLE001 - the publisher must survive anything
                if not isinstance(error, (StoreError, CkptfsError)):
                    log.exception("unexpected failure publishing namespace events")
                self._record_error(f"publishing namespace events: {error}")
                await trio.sleep(5)
                continue
            if published:
                self.notify_progress()
            else:
                self._publish = trio.Event()
                await self._publish.wait()

    async def _publish_once(self) -> bool:
        pending = self.journal.get_meta("pending_segment")
        if pending is not None:
            seq, upto = json.loads(pending)
            rows = self.journal.outbox(upto=upto)
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
            seq, upto = int(self.journal.get_meta("next_segment") or 0), rows[-1][0]
            # Remember the exact batch first: after a crash the same seq must carry the same events.
            self.journal.set_meta("pending_segment", json.dumps([seq, upto]))
            self.journal.commit(durable=True)
        events = [self._complete(record, version) for _, record, version in rows]
        await trio.to_thread.run_sync(self.lake.append_log, self.mount_id, seq, events, limiter=self.network)
        self.journal.drop_outbox(upto)
        self.journal.set_meta("next_segment", str(seq + 1))
        self.journal.delete_meta("pending_segment")
        self.journal.add_counter("events_published", len(events))
        self.journal.commit(durable=True)
        return True

    def _complete(self, record: dict, version_id: int | None) -> dict:
        if version_id is None:
            return record
        version = self.journal.version(version_id)
        assert version is not None and version.manifest is not None
        return {**record, "manifest": version.manifest, "size": version.size, "mode": version.mode,
                "mtime_ns": version.mtime_ns, "path": record.get("path", encode_path(version.path or b""))}

    # -- figures ------------------------------------------------------------------------------
    def pending_of(self, version: Version) -> int:
        """Bytes of a sealed version not yet sent to the lake."""
        sent = self.sent.get(version.id) if version.id in self.active else self.prefix.early_bytes(version.id)
        return max(0, version.size - (sent or 0))

    def pending_bytes(self, sealed: list[Version] | None = None) -> int:
        if sealed is None:
            sealed = self.journal.versions_in_state(SEALED)
        return sum(self.pending_of(version) for version in sealed)


CUT_BATCH = 16


def _cut_file_into(send: trio.MemorySendChannel[list[Cut]], fd: int, size: int, start: int, profile: int) -> None:
    """In a worker thread: send the cuts of a sealed staging file from `start` (one of its cuts) to
    its end, a batch at a time. Stops quietly if the receiver has gone (its upload failed)."""
    if size <= start:
        return
    batch: list[Cut] = []
    try:
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
            cuts = Chunker(profile).cut(mapped, skip=start)
            try:
                for cut in cuts:
                    batch.append(cut)
                    if len(batch) == CUT_BATCH:
                        trio.from_thread.run(send.send, batch)
                        batch = []
            finally:
                cuts.close()  # release its views of the mapping before the mapping closes
        if batch:
            trio.from_thread.run(send.send, batch)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.Cancelled):
        return


async def _batches(cuts: list[Cut] | trio.MemoryReceiveChannel[list[Cut]]) -> AsyncIterator[list[Cut]]:
    if isinstance(cuts, list):
        yield cuts
        return
    async for batch in cuts:
        yield batch
