"""The uploader's cutting thread, on its own, and what the chunk path does with the ids it computes."""

import os
import random

import pytest
import trio

from ckptfs.cache.journal import Journal
from ckptfs.cache.staging import Staging
from ckptfs.engine import chunks as chunks_module
from ckptfs.engine.uploader import CUT_BATCH, Uploader, _cut_file_into
from ckptfs.errors import CkptfsError
from ckptfs.lake import Lake, codec
from ckptfs.lake.chunker import Chunker, Cut
from ckptfs.store.memory import MemoryStore

MIB = 1 << 20


def run_cutter(path, size: int, buffer: int, consume) -> None:
    """Run the cutting thread over a file, handing its receive channel to `consume`."""
    fd = os.open(path, os.O_RDONLY)

    async def main():
        send, receive = trio.open_memory_channel(buffer)
        async with trio.open_nursery() as nursery:
            async def cut():
                async with send:
                    await trio.to_thread.run_sync(_cut_file_into, send, fd, size, 0, 2)
            nursery.start_soon(cut)
            async with receive:
                await consume(receive)

    try:
        trio.run(main)
    finally:
        os.close(fd)


def test_the_cutter_sends_every_cut_in_batches(tmp_path):
    data = os.urandom(24 << 20)
    (tmp_path / "f").write_bytes(data)
    received = []

    async def consume(receive):
        async for batch in receive:
            assert len(batch) <= CUT_BATCH
            received.extend(batch)

    run_cutter(tmp_path / "f", len(data), 1, consume)
    assert received == list(Chunker(2).cut(data))
    assert [cut.identifier for cut in received] == [codec.chunk_id(data[cut.offset:cut.offset + cut.length])
                                                    for cut in received]  # each hashed as it was cut


def test_the_cutter_stops_quietly_when_its_receiver_goes_away(tmp_path):
    # What happens when a chunk upload fails: the receiver closes mid-file. The thread must end
    # without an error and without leaving the mapping exported.
    (tmp_path / "f").write_bytes(os.urandom(64 << 20))
    first = []

    async def consume(receive):
        first.extend(await receive.receive())

    run_cutter(tmp_path / "f", 64 << 20, 0, consume)
    assert len(first) == CUT_BATCH


def test_a_sealed_file_whose_chunks_the_lake_holds_is_not_read_again(tmp_path, monkeypatch):
    """The cutting thread hashes each chunk as it cuts it; a chunk the lake holds is then settled
    without reading it. An identical file uploaded again reads only its small chunks (always packed
    again beside their neighbours), stores nothing new, and names the same chunks."""
    lake = Lake(MemoryStore())
    lake.open(create=True)
    staging = Staging(str(tmp_path / "staging"))
    uploader = Uploader(Journal(str(tmp_path / "journal.sqlite")), staging, lake, "m" * 16)
    data = random.Random(3).randbytes(12 * MIB)
    read: list[Cut] = []
    reading = chunks_module._read_chunks

    def counting(fd, cuts):
        read.extend(cuts)
        return reading(fd, cuts)

    monkeypatch.setattr(chunks_module, "_read_chunks", counting)
    results = []

    async def main():
        for version in (1, 2):
            staging.create(version)
            staging.write(version, data, 0)
            results.append(await uploader._cut_and_upload(version, staging.fd(version), len(data), 0))

    trio.run(main)
    (first, first_new, _), (again, again_new, again_stored) = results
    assert first == again and first_new == len(data) and again_new == again_stored == 0
    big = [length for _, length in first if length >= chunks_module.SMALL_CHUNK]
    assert sum(cut.length for cut in read) == len(data) + sum(length for _, length in first) - sum(big)


def test_a_chunk_that_is_not_what_was_hashed_when_cut_is_an_error_not_a_wrong_id(tmp_path):
    """The bytes read to pack a chunk are hashed again: if they differ from the bytes hashed when
    the file was cut, the upload fails rather than store them under the other bytes' id."""
    path = tmp_path / "f"
    path.write_bytes(b"a" * MIB)
    fd = os.open(path, os.O_RDONLY)
    try:
        good = Cut(0, MIB, codec.chunk_id(b"a" * MIB))
        assert chunks_module._read_chunk(fd, good)[1] == good.identifier
        with pytest.raises(CkptfsError, match="changed under the uploader"):
            chunks_module._read_chunk(fd, Cut(0, MIB, codec.chunk_id(b"b" * MIB)))
    finally:
        os.close(fd)
