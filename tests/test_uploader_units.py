"""The uploader's cutting thread, on its own."""

import os

import trio

from ckptfs.engine.uploader import CUT_BATCH, _cut_file_into
from ckptfs.lake.chunker import Chunker


def test_the_cutter_sends_every_cut_in_batches(tmp_path):
    data = os.urandom(24 << 20)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    received = []

    async def main():
        send, receive = trio.open_memory_channel(1)
        async with trio.open_nursery() as nursery:
            async def cut():
                async with send:
                    await trio.to_thread.run_sync(_cut_file_into, send, fd, len(data), 0, 2)
            nursery.start_soon(cut)
            async with receive:
                async for batch in receive:
                    assert len(batch) <= CUT_BATCH
                    received.extend(batch)

    try:
        trio.run(main)
    finally:
        os.close(fd)
    assert received == list(Chunker(2).cut(data))


def test_the_cutter_stops_quietly_when_its_receiver_goes_away(tmp_path):
    # What happens when a chunk upload fails: the receiver closes mid-file. The thread must end
    # without an error and without leaving the mapping exported.
    (tmp_path / "f").write_bytes(os.urandom(64 << 20))
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    first = []

    async def main():
        send, receive = trio.open_memory_channel(0)
        async with trio.open_nursery() as nursery:
            async def cut():
                async with send:
                    await trio.to_thread.run_sync(_cut_file_into, send, fd, 64 << 20, 0, 2)
            nursery.start_soon(cut)
            async with receive:
                first.extend(await receive.receive())

    try:
        trio.run(main)
    finally:
        os.close(fd)
    assert len(first) == CUT_BATCH
