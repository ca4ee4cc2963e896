"""The chunk path: hash each chunk of a staging file, skip what the lake holds (dedup), compress where it
pays, and pack the rest (lake/packs.py): the chunks of one call go into its packs in file order, so a
reader fetches a run of them with one ranged GET; a pack is PUT once PACK_BYTES are in it, or when the
call's chunks end. Used by the version workers (engine/uploader.py) and by the rounds that upload a
file while it is written (engine/prefix.py). Where each chunk went is recorded in the journal's
known chunks and, for the version's own packs, in `placed`: its manifest names those copies first.

Memory is bounded twice: chunks read but not yet in a pack by `slots`, packs being filled or PUT by
PACKS_IN_FLIGHT (each up to PACK_BYTES).

Journal access happens only on the trio thread; threads do CPU and network work only.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import trio

from ckptfs.cache.journal import Journal
from ckptfs.cache.staging import Staging
from ckptfs.engine.progress import Progress
from ckptfs.errors import CkptfsError
from ckptfs.lake import Lake, codec, packs
from ckptfs.lake.chunker import Cut
from ckptfs.lake.packs import Location

# 32 MiB: 32 PUTs per GiB of new data, under the 64 the lake's budget allows with manifests and
# segments; 8 in flight fill 8 connections (~85 MB/s each on S3) with 256 MiB of memory at most
# (docs/DESIGN.md, "Packs").
PACK_BYTES = 32 << 20
PACKS_IN_FLIGHT = 8
# Chunks below this are packed again even when the lake has them: the ~100-byte record headers of
# torch.save output (chunker profile 3) are the same in every save, and naming their old copies
# broke every run of a fresh file's chunks at every record (a 1 GiB restore: 519 GETs, not 37).
SMALL_CHUNK = 64 << 10


@dataclass
class _Pack:
    """A pack being filled by one call: (chunk id, raw length, chunk object) in file order."""
    objects: list[tuple[bytes, int, bytes]] = field(default_factory=list)
    size: int = 0


class ChunkUploads:
    def __init__(self, journal: Journal, staging: Staging, lake: Lake, progress: Progress, *,
                 network_threads: int = 16, pack_bytes: int = PACK_BYTES,
                 packs_in_flight: int = PACKS_IN_FLIGHT) -> None:
        self.journal = journal
        self.staging = staging
        self.lake = lake
        self.progress = progress
        self.network = trio.CapacityLimiter(network_threads)
        self.cpu = trio.CapacityLimiter(max(1, os.cpu_count() or 1))
        self._chunk_slots = trio.Semaphore(network_threads * 2)  # bounds chunk bytes held in memory
        self._inflight_chunks: dict[bytes, trio.Event] = {}  # chunk id -> set once its pack landed or failed
        self._pack_slots = trio.Semaphore(packs_in_flight)
        self.pack_bytes = pack_bytes
        self.sent: dict[int, int] = {}  # version id -> bytes of it in the lake so far
        # version id -> where its own packs put its chunks: its manifest names these copies rather
        # than older ones the journal knows (small chunks are packed again, next to their neighbours)
        self.placed: dict[int, dict[bytes, Location]] = {}

    async def upload_chunks(self, version: int, fd: int, cuts: list[Cut] | trio.MemoryReceiveChannel[list[Cut]],
                            slots: trio.Semaphore | None = None) -> tuple[list[tuple[bytes, int]], int, int]:
        """Hash, dedup and pack the chunks at `cuts` of a staging file: (entries, new bytes, stored bytes).
        When it returns, every chunk of `entries` is in the lake and its location in the journal.

        `cuts` is a list, or a channel of lists still being cut. `slots` bounds the chunks in hand at
        once (default: shared by all versions).
        """
        slots = slots or self._chunk_slots
        entries: dict[int, tuple[bytes, int]] = {}
        ready: dict[int, tuple[bytes, int, bytes] | None] = {}  # index -> object to pack, or None: no need
        claimed: set[bytes] = set()  # chunks this call packs; other calls wait for their location
        elsewhere: set[bytes] = set()  # chunks another call (or an earlier pack of this one) is packing
        totals = [0, 0]  # new raw bytes, stored object bytes
        failures: list[Exception] = []
        cut_count: list[int | None] = [None]  # known once the cuts end
        wakeup = [trio.Event()]
        held: set[int] = set()  # indices holding a slot: released once in a pack, or at the end

        def fail(error: Exception) -> None:
            # One failed chunk fails the call: stop its siblings rather than let several errors
            # leave the nursery as a group.
            failures.append(error)
            nursery.cancel_scope.cancel()

        async def one(index: int, cut: Cut) -> None:
            try:
                data = await trio.to_thread.run_sync(os.pread, fd, cut.length, cut.offset, limiter=self.cpu)
                if len(data) != cut.length:
                    raise CkptfsError(f"staging file of version {version:x} changed under the uploader")
                identifier = await trio.to_thread.run_sync(codec.chunk_id, data, limiter=self.cpu)
                entries[index] = (identifier, cut.length)
                if cut.length >= SMALL_CHUNK and self.journal.chunk_location(identifier) is not None:
                    self.journal.add_counter("dedup_bytes", cut.length)
                    self.sent[version] = self.sent.get(version, 0) + cut.length
                    item = None
                elif identifier in self._inflight_chunks:
                    self.journal.add_counter("dedup_bytes", cut.length)
                    self.sent[version] = self.sent.get(version, 0) + cut.length
                    elsewhere.add(identifier)
                    item = None
                else:
                    self._inflight_chunks[identifier] = trio.Event()
                    claimed.add(identifier)
                    _, blob = await trio.to_thread.run_sync(codec.encode, data, identifier, limiter=self.cpu)
                    item = (identifier, cut.length, blob)
                ready[index] = item
                wakeup[0].set()
            except Exception as error:  # noqa: BLE001 - reported once, below, as the call's failure
                fail(error)

        async def append() -> None:
            """Take the chunks in file order into packs; PUT each pack as it fills, and the last."""
            index, current = 0, None
            try:
                while True:
                    while index not in ready and cut_count[0] != index:
                        wakeup[0] = trio.Event()
                        await wakeup[0].wait()
                    if index == cut_count[0]:
                        break
                    item = ready.pop(index)
                    if item is not None:
                        if current is None:
                            await self._pack_slots.acquire()
                            current = _Pack()
                        current.objects.append(item)
                        current.size += len(item[2])
                        if current.size >= self.pack_bytes:
                            nursery.start_soon(put, current)
                            current = None
                    held.discard(index)
                    slots.release()
                    index += 1
                if current is not None:
                    nursery.start_soon(put, current)
                    current = None
            except Exception as error:  # noqa: BLE001 - as above
                fail(error)
            finally:
                if current is not None:
                    self._pack_slots.release()

        async def put(pack: _Pack) -> None:
            identifiers = [identifier for identifier, _, _ in pack.objects]
            raw = sum(length for _, length, _ in pack.objects)
            try:
                pack_id = packs.new_pack_id()
                data, locations = await trio.to_thread.run_sync(
                    packs.encode, pack_id, [(identifier, blob) for identifier, _, blob in pack.objects],
                    limiter=self.cpu)
                pack.objects = []  # the objects are in `data` now: hold them once
                await trio.to_thread.run_sync(self.lake.put_pack, pack_id, data, limiter=self.network)
                self.journal.add_chunk_locations(zip(identifiers, locations, strict=True))
                self.placed.setdefault(version, {}).update(zip(identifiers, locations, strict=True))
                self.journal.add_counter("packs", 1)
                totals[0] += raw
                totals[1] += len(data)
                self.sent[version] = self.sent.get(version, 0) + raw
            except Exception as error:  # noqa: BLE001 - as above
                fail(error)
            finally:
                self._pack_slots.release()
                self._release(identifiers, claimed)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(append)
                index = 0
                async for batch in _batches(cuts):
                    for cut in batch:
                        if failures:
                            break
                        await slots.acquire()
                        held.add(index)
                        nursery.start_soon(one, index, cut)
                        index += 1
                    if failures:
                        break
                cut_count[0] = index
                wakeup[0].set()
        finally:
            for _ in held:
                slots.release()
            self._release(list(claimed), claimed)  # what never reached a pack that landed
        if failures:
            raise failures[0]
        # Chunks another call was packing: theirs must land before a manifest names them.
        for identifier in elsewhere:
            while identifier in self._inflight_chunks:
                await self._inflight_chunks[identifier].wait()
            if self.journal.chunk_location(identifier) is None:
                raise CkptfsError(f"chunk {identifier.hex()} of version {version:x}: the upload packing it failed")
        return [entries[number] for number in range(index)], totals[0], totals[1]

    def _release(self, identifiers: list[bytes], claimed: set[bytes]) -> None:
        """Chunks a call claimed are settled (in the lake, or given up): wake whoever waits on them."""
        for identifier in identifiers:
            if identifier in claimed:
                claimed.discard(identifier)
                self._inflight_chunks.pop(identifier).set()


async def _batches(cuts: list[Cut] | trio.MemoryReceiveChannel[list[Cut]]) -> AsyncIterator[list[Cut]]:
    if isinstance(cuts, list):
        yield cuts
        return
    async for batch in cuts:
        yield batch
