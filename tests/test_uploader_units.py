"""The uploader's cutting thread, on its own."""

import os

import trio

from ckptfs.engine.uploader import CUT_BATCH, _cut_file_into
from ckptfs.lake.chunker import Chunker


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


def test_the_cutter_stops_quietly_when_its_receiver_goes_away(tmp_path):
    # What happens when a chunk upload fails: the receiver closes mid-file. The thread must end
    # without an error and without leaving the mapping exported.
    (tmp_path / "f").write_bytes(os.urandom(64 << 20))
    first = []

    async def consume(receive):
        first.extend(await receive.receive())

    run_cutter(tmp_path / "f", 64 << 20, 0, consume)
    assert len(first) == CUT_BATCH
