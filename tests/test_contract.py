"""Lines of docs/SEMANTICS.md checked where they can fail, at the lowest level that shows them: the
file system layer on a MemoryStore (requests counted by FaultyStore), trio's MockClock where the
code waits, the retrying store with its sleep injected, the status table's rows."""

import os
import random

import pytest
import trio
import trio.testing

from ckptfs.cache.journal import COMMITTED
from ckptfs.cli import status_rows
from ckptfs.files import Caller
from ckptfs.lake import Lake
from ckptfs.store import RetryingStore, StoreError
from ckptfs.store.base import PermanentStoreError, TemporaryStoreError
from ckptfs.store.faults import FaultyStore
from ckptfs.store.memory import MemoryStore
from tests.layers import load, mount_on, published, running, save

ROOT = 1
MIB = 1 << 20
ME = Caller(uid=os.getuid(), gid=os.getgid())


def counted_lake() -> tuple[FaultyStore, Lake]:
    faulty = FaultyStore(MemoryStore())
    lake = Lake(RetryingStore(faulty, first_delay=0.001, max_delay=0.01))
    lake.open(create=True)
    return faulty, lake


def count_commits(journal) -> list[int]:
    """Make the journal count its commits (the instance's own, whoever calls it)."""
    commits = [0]
    commit = journal.commit

    def counting(**options):
        commits[0] += 1
        commit(**options)

    journal.commit = counting
    return commits


def test_a_write_makes_no_store_request_and_no_journal_commit(tmp_path):
    """SEMANTICS, write(): no network, no journal commit per write. 256 writes of 64 KiB into an
    open file with the engine running: the store sees nothing and the journal commits nothing until
    the close."""
    faulty, lake = counted_lake()

    async def main():
        mount = mount_on(tmp_path, "only", lake)
        files = mount.files
        async with running(mount):
            opened, _ = files.handles.create(ROOT, b"model.pt", 0o644, os.O_WRONLY, ME)
            await trio.sleep(1)  # anything the create started has settled
            requests, commits = sum(faulty.calls.values()), count_commits(files.journal)
            block = os.urandom(64 << 10)
            for index in range(256):
                assert await files.handles.write(opened.fh, index * len(block), block) == len(block)
                await trio.sleep(0.01)  # the engine's tasks get to run between writes
            assert sum(faulty.calls.values()) == requests
            assert commits[0] == 0
            files.handles.flush(opened.fh)
            files.handles.release(opened.fh)
            assert commits[0] >= 1  # the close seals the version and commits
            await published(files)
            assert sum(faulty.calls.values()) > requests

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_an_o_trunc_open_writes_nothing_until_closed(tmp_path):
    """Opening a committed file with O_TRUNC queues no event, adds no history state and sends
    nothing: another mount still reads the old content. The close makes the empty version."""
    faulty, lake = counted_lake()

    async def main():
        writer, reader = mount_on(tmp_path, "writer", lake), mount_on(tmp_path, "reader", lake)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run_engine)
            await nursery.start(reader.run_engine)
            files = writer.files
            ino = await save(files, b"last.ckpt", b"step 100")
            await published(files)
            outbox, history = files.journal.outbox_length(), files.journal.history(b"last.ckpt")
            requests = sum(faulty.calls.values())
            opened = await files.handles.open(ino, os.O_WRONLY | os.O_TRUNC)
            await trio.sleep(5)  # lingering and uploads would have happened by now
            assert files.journal.outbox_length() == outbox
            assert files.journal.history(b"last.ckpt") == history
            assert sum(faulty.calls.values()) == requests
            await reader.following.refresh()
            assert await read(reader.files, b"last.ckpt") == b"step 100"
            files.handles.flush(opened.fh)
            files.handles.release(opened.fh)
            await published(files)
            assert len(files.journal.history(b"last.ckpt")) == len(history) + 1
            await reader.following.refresh()
            assert await read(reader.files, b"last.ckpt") == b""
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def read(files, path: bytes) -> bytes:
    return await load(files, files.tree.lookup(ROOT, path).ino)


def test_backpressure_evicts_clean_data_before_it_waits(tmp_path):
    """Over budget with committed (clean) staging files: the write evicts them, oldest read first,
    and never waits."""
    _, lake = counted_lake()

    async def main():
        mount = mount_on(tmp_path, "only", lake, staging_limit=16 * MIB)
        files = mount.files
        async with running(mount):
            old = [await save(files, b"old-%d" % index, os.urandom(4 * MIB)) for index in range(3)]
            await published(files)
            versions = [files.journal.inode(ino).version for ino in old]
            assert all(files.journal.version(v).state == COMMITTED and files.journal.version(v).staged
                       for v in versions)
            # Uploads commit in any order; reading the last two makes the first the least recently used.
            await read(files, b"old-1")
            await read(files, b"old-2")
            await save(files, b"new", os.urandom(8 * MIB))
            status = files.control.status()
            assert status["backpressure_waits"] == 0
            evicted = [not files.journal.version(v).staged for v in versions]
            assert evicted[0] and any(evicted), evicted  # the least recently used went first
            assert await read(files, b"old-0") and status["staged_bytes"] <= 16 * MIB

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_write_nothing_can_make_room_for_goes_over_budget_rather_than_deadlock(tmp_path):
    """Only dirty data of a file written out of order (it cannot spill), and no upload running: the
    write goes ahead over budget instead of waiting forever (on MockClock, a wait of a minute fails)."""
    _, lake = counted_lake()

    async def main():
        mount = mount_on(tmp_path, "only", lake, staging_limit=8 * MIB)
        files = mount.files
        async with running(mount):
            opened, _ = files.handles.create(ROOT, b"scattered", 0o644, os.O_WRONLY, ME)
            block = os.urandom(MIB)
            with trio.fail_after(60):
                for index in reversed(range(12)):  # backwards: no sequential prefix to spill
                    await files.handles.write(opened.fh, index * MIB, block)
            assert files.staging.total_bytes > 8 * MIB
            files.handles.flush(opened.fh)
            files.handles.release(opened.fh)
            await published(files)
            assert await read(files, b"scattered") == block * 12

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class Flaky(MemoryStore):
    """Fails every GET `failures` times with a temporary error, then answers."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def get(self, key, start=None, end=None):
        if self.failures:
            self.failures -= 1
            raise TemporaryStoreError(f"503 SlowDown on {key}")
        return super().get(key, start, end)


def test_retries_back_off_exponentially_with_full_jitter():
    """Each wait is drawn from [0, min(max_delay, first_delay * 2^attempt)]: never the same schedule
    twice, never above the cap; and the status tells it is retrying until a request succeeds."""
    random.seed(7)
    delays: list[float] = []
    inner = Flaky(failures=8)
    inner.put("k", b"v")
    store = RetryingStore(inner, first_delay=0.1, max_delay=1.0, give_up_after=3600, sleep=delays.append)
    assert store.get("k") == b"v"
    assert len(delays) == 8
    caps = [min(1.0, 0.1 * 2 ** attempt) for attempt in range(1, 9)]  # the k-th retry waits up to first * 2^k
    assert all(0 <= delay <= cap for delay, cap in zip(delays, caps, strict=True))
    assert len(set(delays)) == 8 and delays != caps  # drawn, not the plain exponential
    assert store.retries == 8


def test_status_shows_a_store_that_is_retrying():
    """`ckptfs status` row "store": `retrying: <error>` while the last request failed, else ok."""
    status = {"staged_bytes": 0, "staging_limit_bytes": None, "spilled_bytes": 0, "dirty_files": 0,
              "dirty_bytes": 0, "dirty_uploaded_bytes": 0, "uploading_files": 1, "uploading_bytes": 10,
              "oldest_pending_age_s": 3.0, "events_pending": 1, "committed_versions": 0, "committed_bytes": 0,
              "new_chunk_bytes": 0, "stored_bytes": 0, "dedup_ratio": None, "compression_ratio": None,
              "store_retrying": True, "last_store_error": "503 SlowDown", "store_retries": 4,
              "store_requests": {}, "last_error": None}
    assert dict(status_rows(status))["store"] == "retrying: 503 SlowDown"
    assert dict(status_rows({**status, "store_retrying": False}))["store"] == "ok (4 retries so far)"


@pytest.mark.parametrize("temporary", [True, False])
def test_only_temporary_failures_are_retried(temporary):
    delays: list[float] = []
    inner = Flaky(failures=1)
    inner.put("k", b"v")
    store = RetryingStore(inner, first_delay=0.1, give_up_after=3600, sleep=delays.append)
    if not temporary:
        inner.get = lambda key, start=None, end=None: (_ for _ in ()).throw(PermanentStoreError("403 AccessDenied"))
        with pytest.raises(StoreError, match="AccessDenied"):
            store.get("k")
        assert delays == []
    else:
        assert store.get("k") == b"v" and len(delays) == 1
