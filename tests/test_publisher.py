"""The publisher (engine/publisher.py) alone: a journal's outbox becomes log segments, with trio's
MockClock for the lingering and versions committed by the test, one by one, as slow uploads do."""

import trio
import trio.testing

from ckptfs.cache.journal import COMMITTED, SEALED, Journal
from ckptfs.engine.progress import Progress
from ckptfs.engine.publisher import PUBLISH_LINGER, Publisher
from ckptfs.lake import Lake, events
from ckptfs.store.memory import MemoryStore


def publisher_on(tmp_path):
    journal = Journal(str(tmp_path / "journal.sqlite"))
    lake = Lake(MemoryStore())
    lake.open(create=True)
    segments: list[tuple[int, int]] = []  # (seq, events) as on_published is told
    publisher = Publisher(journal, lake, "m", Progress(), trio.CapacityLimiter(4), on_error=print,
                          on_published=lambda seq, raw, _: segments.append((seq, len(raw))))
    return journal, publisher, segments


def queue_puts(journal: Journal, count: int) -> list[int]:
    versions = []
    for index in range(count):
        version = journal.new_version(None, state=SEALED, size=1, path=b"f%d" % index, sealed_ns=index + 1)
        journal.enqueue(events.record("put", b"f%d" % index, index + 1), version)
        versions.append(version)
    journal.commit()
    return versions


def commit(journal: Journal, version: int) -> None:
    journal.update_version(version, state=COMMITTED, manifest=f"{version:032x}")


def test_a_sync_waiting_on_slow_uploads_still_gets_shared_segments(tmp_path):
    """Uploads fall behind and a `sync` waits for 60 files that commit one every 50 ms: the
    lingering is cut short only once every waited-for event is ready, so they share a few
    segments (one per PUBLISH_LINGER at most) instead of one each."""
    journal, publisher, segments = publisher_on(tmp_path)
    versions = queue_puts(journal, 60)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher.run)
            publisher.hurry(journal.outbox_tail())
            started = trio.current_time()
            for version in versions:
                await trio.sleep(0.05)
                commit(journal, version)
                publisher.poke()
            await publisher.wait_published(journal.outbox_tail())
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
        assert sum(count for _, count in segments) == 60
        assert len(segments) <= elapsed / PUBLISH_LINGER + 1, segments

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_waiter_whose_events_are_all_ready_does_not_wait_for_the_lingering(tmp_path):
    journal, publisher, segments = publisher_on(tmp_path)
    versions = queue_puts(journal, 5)
    for version in versions:
        commit(journal, version)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher.run)
            started = trio.current_time()
            await publisher.wait_published(journal.outbox_tail())
            assert trio.current_time() - started < PUBLISH_LINGER
            nursery.cancel_scope.cancel()
        assert segments == [(0, 5)]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_changes_nobody_waits_for_linger_and_share_one_segment(tmp_path):
    journal, publisher, segments = publisher_on(tmp_path)
    versions = queue_puts(journal, 20)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher.run)
            for version in versions:
                commit(journal, version)
                publisher.poke()
                await trio.sleep(0.01)  # 0.2 s in all: within one lingering
            await trio.sleep(PUBLISH_LINGER * 2)
            nursery.cancel_scope.cancel()
        assert segments == [(0, 20)]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
