"""The read path's read-ahead, without a mount: a sequential reader's window grows until the rest of
the file is on its way; a reader that jumps around fetches only what it reads."""

import os

import trio

from ckptfs.cache.chunkcache import ChunkCache
from ckptfs.engine.fetcher import Fetcher
from ckptfs.lake import Lake, codec
from ckptfs.lake.manifest import Manifest
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
        lake.put_chunk_object(identifier, blob)
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
