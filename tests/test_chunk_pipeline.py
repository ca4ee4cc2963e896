"""The chunk path alone (engine/chunks.py): staging files cut into chunks, hashed, deduplicated,
packed in file order and PUT, as a pipeline of stages, on a MemoryStore with failures injected."""

import os
import random

import pytest
import trio

from ckptfs.cache.journal import Journal
from ckptfs.cache.staging import Staging
from ckptfs.engine import chunks as chunks_module
from ckptfs.engine.chunks import SMALL_CHUNK, ChunkUploads
from ckptfs.engine.progress import Progress
from ckptfs.lake import Lake
from ckptfs.lake.chunker import Chunker, Cut
from ckptfs.store import StoreError
from ckptfs.store.faults import FaultyStore
from ckptfs.store.memory import MemoryStore

MIB = 1 << 20


def chunk_path(tmp_path, *, pack_bytes: int = 4 * MIB):
    store = FaultyStore(MemoryStore())
    lake = Lake(store)
    lake.open(create=True)
    journal = Journal(str(tmp_path / "journal.sqlite"))
    staging = Staging(str(tmp_path / "staging"))
    return store, lake, journal, staging, ChunkUploads(journal, staging, lake, Progress(), network_threads=4,
                                                       pack_bytes=pack_bytes)


def staged(staging: Staging, version: int, data: bytes) -> tuple[int, list[Cut]]:
    staging.create(version)
    staging.write(version, data, 0)
    return staging.fd(version), list(Chunker().cut(data))


def test_two_files_with_shared_content_at_once_store_each_chunk_once_in_file_order(tmp_path):
    store, lake, journal, staging, chunks = chunk_path(tmp_path)
    seeded = random.Random(5)  # fixed content with no chunk under SMALL_CHUNK, which is always packed again
    shared, own_a, own_b = seeded.randbytes(12 * MIB), seeded.randbytes(3 * MIB), seeded.randbytes(3 * MIB)
    fd_a, cuts_a = staged(staging, 1, shared + own_a)
    fd_b, cuts_b = staged(staging, 2, own_b + shared)
    assert min(cut.length for cut in cuts_a + cuts_b) >= SMALL_CHUNK
    results = {}

    async def main():
        async def one(version, fd, cuts):
            results[version] = await chunks.upload_chunks(version, fd, cuts)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, 1, fd_a, cuts_a)
            nursery.start_soon(one, 2, fd_b, cuts_b)

    trio.run(main)
    (entries_a, new_a, _), (entries_b, new_b, _) = results[1], results[2]
    assert [length for _, length in entries_a] == [cut.length for cut in cuts_a]
    assert [length for _, length in entries_b] == [cut.length for cut in cuts_b]
    every = {identifier for identifier, _ in entries_a + entries_b}
    assert all(journal.chunk_location(identifier) is not None for identifier in every)
    # Each distinct chunk was packed by one call only: the new bytes add up to the distinct content.
    distinct = {identifier: length for identifier, length in entries_a + entries_b}
    assert new_a + new_b == sum(distinct.values())
    assert chunks._inflight_chunks == {} and chunks._chunk_slots.value == 8
    # File order inside each call's packs: a chunk's offset grows with its place in the file.
    for version, entries in ((1, entries_a), (2, entries_b)):
        placed = chunks.placed[version]
        own = [placed[identifier] for identifier, _ in entries if identifier in placed]
        by_pack: dict = {}
        for location in own:
            by_pack.setdefault(location.pack, []).append(location.offset)
        assert all(offsets == sorted(offsets) for offsets in by_pack.values())


def test_a_failed_pack_put_fails_the_call_as_itself_and_leaks_nothing(tmp_path):
    store, lake, journal, staging, chunks = chunk_path(tmp_path, pack_bytes=1 * MIB)
    data = os.urandom(10 * MIB)
    fd, cuts = staged(staging, 1, data)
    fault = store.fail("put", "packs/", kind="permanent", times=1)

    async def main():
        with pytest.raises(StoreError, match="injected permanent failure"):
            await chunks.upload_chunks(1, fd, cuts)
        assert fault.fired == 1
        assert chunks._inflight_chunks == {} and chunks._chunk_slots.value == 8
        assert chunks._pack_slots.value == 8
        # Nothing is stuck: the same file uploads now, every chunk found in the lake.
        entries, _, _ = await chunks.upload_chunks(1, fd, cuts)
        assert all(journal.chunk_location(identifier) is not None for identifier, _ in entries)

    trio.run(main)


def test_a_staging_file_shorter_than_its_cuts_fails_the_call(tmp_path):
    _, _, _, staging, chunks = chunk_path(tmp_path)
    fd, cuts = staged(staging, 1, os.urandom(2 * MIB))
    cuts.append(Cut(2 * MIB, 4096))  # beyond the end: the file changed under the uploader

    async def main():
        with pytest.raises(Exception, match="changed under the uploader"):
            await chunks.upload_chunks(1, fd, cuts)
        assert chunks._inflight_chunks == {} and chunks._chunk_slots.value == 8

    trio.run(main)


def test_more_calls_at_once_than_pack_slots_all_finish(tmp_path):
    """Six files at once through a chunk path with 2 pack slots and 4 chunk slots: a call that held a
    pack slot for a pack still being filled while others held the chunk slots it needed stopped
    every call. Pack slots are now taken only by packs being PUT."""
    _, _, journal, staging, _ = chunk_path(tmp_path)
    store = MemoryStore()
    lake = Lake(store)
    lake.open(create=True)
    chunks = ChunkUploads(journal, staging, lake, Progress(), network_threads=2, pack_bytes=3 * MIB,
                          packs_in_flight=2)
    staged_files = [staged(staging, version, os.urandom(12 * MIB)) for version in range(1, 7)]

    async def main():
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for version, (fd, cuts) in enumerate(staged_files, start=1):
                    nursery.start_soon(chunks.upload_chunks, version, fd, cuts)

    trio.run(main)
    assert chunks._inflight_chunks == {} and chunks._chunk_slots.value == 4 and chunks._pack_slots.value == 2


@pytest.mark.parametrize("slots", [1, 2, 64])
def test_chunks_are_read_a_few_per_thread_hand_off_with_as_many_slots_as_there_are(tmp_path, monkeypatch, slots):
    # A call given one slot, or two, gets through (it never holds some slots while waiting for
    # more), and with slots to spare a hand-off reads up to BATCH_CHUNKS chunks.
    _, lake, journal, staging, chunks = chunk_path(tmp_path)
    data = random.Random(9).randbytes(12 * MIB)
    fd, cuts = staged(staging, 1, data)
    handed: list[int] = []
    read = chunks_module._read_chunks

    def counted(fd, batch):
        handed.append(len(batch))
        return read(fd, batch)

    monkeypatch.setattr(chunks_module, "_read_chunks", counted)

    async def main():
        with trio.fail_after(60):
            return await chunks.upload_chunks(1, fd, cuts, trio.Semaphore(slots))

    entries, _, _ = trio.run(main)
    assert [length for _, length in entries] == [cut.length for cut in cuts]
    assert sum(handed) == len(cuts) and max(handed) <= min(slots, chunks_module.BATCH_CHUNKS)
    if slots >= 2 * chunks_module.BATCH_CHUNKS:
        assert len(handed) < len(cuts) / 2  # most hand-offs carried several chunks
    assert b"".join(lake.get_run([(identifier, journal.chunk_location(identifier))])[0]
                    for identifier, _ in entries) == data
