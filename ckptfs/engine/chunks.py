"""The chunk path: hash each chunk of a staging file, skip what the lake holds (dedup), compress where it
pays and PUT the rest, with bounded concurrency. Used by the version workers (engine/uploader.py)
and by the rounds that upload a file while it is written (engine/prefix.py).

Journal access happens only on the trio thread; threads do CPU and network work only.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import trio

from ckptfs.cache.journal import Journal
from ckptfs.cache.staging import Staging
from ckptfs.engine.progress import Progress
from ckptfs.errors import CkptfsError
from ckptfs.lake import Lake, codec
from ckptfs.lake.chunker import Cut


class ChunkUploads:
    def __init__(self, journal: Journal, staging: Staging, lake: Lake, progress: Progress, *,
                 network_threads: int = 16) -> None:
        self.journal = journal
        self.staging = staging
        self.lake = lake
        self.progress = progress
        self.network = trio.CapacityLimiter(network_threads)
        self.cpu = trio.CapacityLimiter(max(1, os.cpu_count() or 1))
        self._chunk_slots = trio.Semaphore(network_threads * 2)  # bounds chunk bytes held in memory
        self._inflight_chunks: dict[bytes, trio.Event] = {}
        self.sent: dict[int, int] = {}  # version id -> bytes of it in the lake so far

    async def upload_chunks(self, version: int, fd: int, cuts: list[Cut] | trio.MemoryReceiveChannel[list[Cut]],
                            slots: trio.Semaphore | None = None) -> tuple[list[tuple[bytes, int]], int, int]:
        """Hash, dedup and store the chunks at `cuts` of a staging file: (entries, new bytes, stored bytes).

        `cuts` is a list, or a channel of lists still being cut. `slots` bounds the chunks in hand at
        once (default: shared by all versions).
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



async def _batches(cuts: list[Cut] | trio.MemoryReceiveChannel[list[Cut]]) -> AsyncIterator[list[Cut]]:
    if isinstance(cuts, list):
        yield cuts
        return
    async for batch in cuts:
        yield batch
