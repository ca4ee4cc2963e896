"""The read path's read-ahead, without a mount: a sequential reader's window grows until the rest of
the file is on its way; a reader that jumps around fetches only what it reads; chunks of a pack are
fetched in runs, within the chunk cache's budget."""

import itertools
import os

import trio
from hypothesis import given
from hypothesis import strategies as st

from ckptfs.cache.chunkcache import ChunkCache
from ckptfs.engine import fetcher as fetcher_module
from ckptfs.engine.fetcher import Fetcher
from ckptfs.lake import Lake, codec, packs
from ckptfs.lake.manifest import Manifest
from ckptfs.store import RetryingStore
from ckptfs.store.memory import MemoryStore

CHUNK = 64 * 1024
COUNT = 60


def lake_with_a_file(tmp_path) -> tuple[Lake, str, bytes]:
    lake = Lake(MemoryStore())
    lake.open()
    data = os.urandom(CHUNK * COUNT)
    chunks = []
    for start in range(0, len(data), CHUNK):
        identifier, blob = codec.encode(data[start:start + CHUNK])
        lake.store.put(codec.chunk_key(identifier), blob)  # a loose chunk object, as lakes of format 1-3 hold
        chunks.append((identifier, CHUNK))
    manifest = lake.put_manifest(Manifest(b"model.pt", len(data), 0o644, 0, "m", 0, chunks))
    return lake, manifest, data


def test_a_sequential_reader_gets_a_growing_read_ahead_and_a_jumping_one_none(tmp_path):
    lake, manifest, data = lake_with_a_file(tmp_path)

    async def main():
        fetcher = Fetcher(lake, ChunkCache(str(tmp_path / "chunks"), 1 << 30), readahead_chunks=4,
                          readahead_max_chunks=64)
        async with trio.open_nursery() as nursery:
            await nursery.start(fetcher.run)
            # Jumping around: only the chunks read are fetched, nothing ahead.
            for index in (50, 10, 30):
                assert await fetcher.read(manifest, index * CHUNK, CHUNK) == data[index * CHUNK:(index + 1) * CHUNK]
            await trio.sleep(0.2)
            assert fetcher.fetched_bytes == 3 * CHUNK
            # Reading from the start, a chunk at a time: 4, 8, 16, 32, 64 chunks ahead; by the sixth
            # read the whole rest of the file is being fetched.
            for index in range(6):
                piece = await fetcher.read(manifest, index * CHUNK, CHUNK, sequential=index > 0)
                assert piece == data[index * CHUNK:(index + 1) * CHUNK]
            with trio.fail_after(10):
                while fetcher.fetched_bytes < COUNT * CHUNK:
                    await trio.sleep(0.01)
            assert fetcher.fetched_bytes == COUNT * CHUNK  # each chunk once
            nursery.cancel_scope.cancel()

    trio.run(main)


def lake_with_a_packed_file(per_pack: int) -> tuple[Lake, RetryingStore, str, bytes]:
    """A file of COUNT chunks in packs of `per_pack` chunks, as an upload writes them (file order)."""
    store = RetryingStore(MemoryStore())
    lake = Lake(store)
    lake.open()
    data = os.urandom(CHUNK * COUNT)
    chunks, locations = [], []
    for first in range(0, COUNT, per_pack):
        objects = [codec.encode(data[index * CHUNK:(index + 1) * CHUNK])
                   for index in range(first, min(COUNT, first + per_pack))]
        pack_id = packs.new_pack_id()
        blob, where = packs.encode(pack_id, objects)
        lake.put_pack(pack_id, blob)
        chunks.extend((identifier, CHUNK) for identifier, _ in objects)
        locations.extend(where)
    manifest = lake.put_manifest(Manifest(b"model.pt", len(data), 0o644, 0, "m", 0, chunks, locations=locations))
    return lake, store, manifest, data


def disk_use(directory: str) -> int:
    total = 0
    for entry in os.scandir(directory):
        try:
            total += entry.stat().st_size
        except FileNotFoundError:  # a chunk being written, renamed meanwhile: counted under its name
            continue
    return total


def read_sequentially(fetcher: Fetcher, manifest: str, data: bytes, piece: int = CHUNK // 2) -> list[int]:
    """Read the whole file in `piece`s as a sequential reader; returns the chunk cache's disk use after each."""
    used = []

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(fetcher.run)
            for offset in range(0, len(data), piece):
                assert await fetcher.read(manifest, offset, piece, sequential=offset > 0) == data[offset:offset + piece]
                used.append(disk_use(fetcher.chunk_cache.directory))
            nursery.cancel_scope.cancel()

    trio.run(main)
    return used


def test_a_sequential_reader_of_a_packed_file_gets_runs_of_chunks_with_one_get_each(tmp_path):
    lake, store, manifest, data = lake_with_a_packed_file(per_pack=20)
    before = store.requests["GET"]
    fetcher = Fetcher(lake, ChunkCache(str(tmp_path / "chunks"), 1 << 30), readahead_chunks=8,
                      readahead_max_chunks=32)
    read_sequentially(fetcher, manifest, data)
    gets = store.requests["GET"] - before
    # 60 chunks in 3 packs: the manifest, the first chunk, then runs of half a window at a time that
    # never cross a pack. One GET per chunk would be 61.
    assert fetcher.fetched_bytes == COUNT * CHUNK  # each chunk once
    assert gets <= 12, f"{gets} GETs"
    assert fetcher.requests == gets - 1


def test_read_ahead_and_runs_stay_within_the_chunk_cache(tmp_path):
    lake, _, manifest, data = lake_with_a_packed_file(per_pack=60)
    limit = 8 * CHUNK
    fetcher = Fetcher(lake, ChunkCache(str(tmp_path / "chunks"), limit), readahead_chunks=8, readahead_max_chunks=64)
    assert fetcher.run_bytes == 2 * CHUNK
    used = read_sequentially(fetcher, manifest, data)
    assert max(used) <= limit
    assert fetcher.fetched_bytes == COUNT * CHUNK  # nothing read ahead was evicted unread


def test_a_sequential_reader_of_cached_chunks_finds_the_next_ones_in_memory(tmp_path):
    lake, store, manifest, data = lake_with_a_packed_file(per_pack=20)
    cache = ChunkCache(str(tmp_path / "chunks"), 1 << 30)
    read_sequentially(Fetcher(lake, cache), manifest, data)  # fills the chunk cache
    gets = store.requests["GET"]
    fetcher = Fetcher(lake, cache, memory_chunks=16)

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(fetcher.run)
            await fetcher.read(manifest, 0, CHUNK)
            await fetcher.read(manifest, CHUNK, CHUNK, sequential=True)
            wanted = {identifier for identifier, _ in fetcher._manifests[manifest][0].chunks[2:10]}
            with trio.fail_after(10):  # the next 8 are loaded from the cache, unasked
                while not wanted <= set(fetcher._memory):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert store.requests["GET"] == gets + 1  # the manifest; every chunk came from the cache


def test_a_cold_sequential_reader_takes_what_was_read_ahead_from_memory_not_the_chunk_cache(tmp_path):
    lake, _, manifest, data = lake_with_a_packed_file(per_pack=20)
    # Runs of up to 20 chunks, only 4 of the last read kept: without the chunks held for the
    # reader, most of each run was written to the chunk cache and read back from it.
    fetcher = Fetcher(lake, ChunkCache(str(tmp_path / "chunks"), 1 << 30), readahead_chunks=8,
                      readahead_max_chunks=32, memory_chunks=4)
    read_sequentially(fetcher, manifest, data)
    assert fetcher.fetched_bytes == COUNT * CHUNK
    assert fetcher.cache_loads == 0

    # Room for 3 chunks only: the rest waits in the chunk cache and is read from there, and no more
    # than the room is ever held.
    held = []
    small = Fetcher(lake, ChunkCache(str(tmp_path / "chunks2"), 1 << 30), readahead_chunks=8,
                    readahead_max_chunks=32, memory_chunks=4, ahead_bytes=3 * CHUNK)
    hold = small._hold
    small._hold = lambda identifier, chunk: (hold(identifier, chunk), held.append(small._held_bytes))
    read_sequentially(small, manifest, data)
    assert small.fetched_bytes == COUNT * CHUNK
    assert 0 < max(held) <= 3 * CHUNK
    assert small.cache_loads > 0


def test_what_a_reader_left_read_ahead_is_let_go_of(tmp_path, monkeypatch):
    monkeypatch.setattr(fetcher_module, "AHEAD_STALE_S", 0.2)
    lake, _, manifest, data = lake_with_a_packed_file(per_pack=60)
    fetcher = Fetcher(lake, ChunkCache(str(tmp_path / "chunks"), 1 << 30), readahead_chunks=16)

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(fetcher.run)
            await fetcher.read(manifest, 0, CHUNK)
            await fetcher.read(manifest, CHUNK, CHUNK, sequential=True)  # then the reader goes away
            with trio.fail_after(30):  # the read-ahead has come, and nothing is on its way
                while not fetcher._held or fetcher._inflight:
                    await trio.sleep(0.01)
            assert fetcher._held_bytes == sum(len(chunk) for chunk, _ in fetcher._held.values())
            await trio.sleep(3 * fetcher_module.AHEAD_STALE_S)
            assert not fetcher._held and fetcher._held_bytes == 0
            nursery.cancel_scope.cancel()

    trio.run(main)


@given(st.lists(st.integers(1, 50), min_size=1, max_size=40), st.data())
def test_the_read_ahead_window_fits_the_room_as_a_walk_over_its_chunks_would(lengths, data):
    """fetcher.fit finds by bisection the chunks from `first` that fit in `room`: the same end and
    room left as adding their lengths one by one (what it replaced)."""
    offsets, total = list(itertools.accumulate([0, *lengths[:-1]])), sum(lengths)
    first = data.draw(st.integers(0, len(lengths)))
    stop = data.draw(st.integers(first, len(lengths)))
    room = data.draw(st.integers(0, total + 10))
    end, left = first, room
    while end < stop and left >= lengths[end]:
        left -= lengths[end]
        end += 1
    assert fetcher_module.fit(offsets, total, first, stop, room) == (end, left)
