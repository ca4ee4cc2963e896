"""The file system layer (`ckptfs/files`) driven directly, without a kernel mount or a server: the
lake on a MemoryStore, failures injected at the ObjectStore seam (FaultyStore), time from trio's
MockClock where the code waits."""

import errno
import json
import logging
import os
import threading
import time

import pytest
import trio
import trio.testing

from ckptfs import cli
from ckptfs.cache.journal import COMMITTED
from ckptfs.engine import uploader as uploader_module
from ckptfs.errors import CkptfsError, FsError
from ckptfs.files import Caller
from ckptfs.files import control as control_module
from ckptfs.lake import Lake
from ckptfs.store import RetryingStore
from ckptfs.store.faults import FaultyStore
from ckptfs.store.memory import MemoryStore
from tests.layers import load, mount_on, published, running, save

ROOT = 1
MIB = 1 << 20
ME = Caller(uid=os.getuid(), gid=os.getgid())


def lake_on(store) -> Lake:
    lake = Lake(RetryingStore(store, first_delay=0.001, max_delay=0.01, give_up_after=60))
    lake.open()
    return lake


def test_save_upload_and_rebuild_on_a_memory_store(tmp_path):
    store = MemoryStore()
    lake = lake_on(store)
    payload = os.urandom(5 * MIB + 3)

    async def main():
        mount = mount_on(tmp_path, "first", lake)
        files = mount.files
        async with running(mount):
            files.tree.mkdir(ROOT, b"run", 0o755, ME)
            ino = await save(files, b"model.pt", payload)
            files.tree.link(ino, files.tree.lookup(ROOT, b"run").ino, b"same.pt")
            await published(files)
            assert files.control.status()["committed_versions"] == 1
        fresh_mount = mount_on(tmp_path, "second", lake)
        fresh = fresh_mount.files
        async with running(fresh_mount):
            run = fresh.tree.lookup(ROOT, b"run")
            first, second = fresh.tree.lookup(ROOT, b"model.pt"), fresh.tree.lookup(run.ino, b"same.pt")
            assert first.ino == second.ino and first.nlink == 2
            assert await load(fresh, first.ino) == payload

    trio.run(main)
    assert any(key.startswith("packs/") for key in store.list(""))


def test_temporary_put_failures_are_retried_until_everything_commits(tmp_path):
    faulty = FaultyStore(MemoryStore())
    lake = lake_on(faulty)
    payload = os.urandom(6 * MIB)
    faulty.fail("put", "packs/", times=5)
    faulty.fail("put", "manifests/", times=2)
    faulty.fail("put", "log/", times=2)

    async def main():
        mount = mount_on(tmp_path, "only", lake)
        files = mount.files
        async with running(mount):
            ino = await save(files, b"f", payload)
            await published(files)
            version = files.journal.version(files.tree.inode(ino).version)
            assert version.state == COMMITTED

    trio.run(main)
    assert all(fault.fired == fault.times for fault in faulty.faults)
    stored = sum(1 for _ in faulty.inner.list(""))
    assert faulty.calls["put"] >= stored + 9  # every failed PUT was sent again


def test_a_corrupt_chunk_reads_as_an_error_naming_it(tmp_path, caplog):
    faulty = FaultyStore(MemoryStore())
    lake = lake_on(faulty)

    async def main():
        mount = mount_on(tmp_path, "writer", lake)
        files = mount.files
        async with running(mount):
            await save(files, b"f", os.urandom(3 * MIB))
            await published(files)
        faulty.fail("get", "packs/", kind="corrupt")
        reader_mount = mount_on(tmp_path, "reader", lake)
        reader = reader_mount.files
        async with running(reader_mount):
            with pytest.raises(CkptfsError) as error:
                await load(reader, reader.tree.lookup(ROOT, b"f").ino)
            assert "chunk" in str(error.value)

    with caplog.at_level(logging.WARNING):
        trio.run(main)


def test_backpressure_waits_for_uploads_and_never_fails_the_write(tmp_path):
    """Writes beyond the staging budget wait (counted) while PUTs fail and are retried; time is
    trio's MockClock, so the one-second waits cost nothing."""
    faulty = FaultyStore(MemoryStore())
    lake = lake_on(faulty)
    faulty.fail("put", "packs/", times=20)
    files_data = [os.urandom(6 * MIB) for _ in range(4)]

    async def main():
        mount = mount_on(tmp_path, "only", lake, staging_limit=12 * MIB)
        files = mount.files
        async with running(mount):
            for index, data in enumerate(files_data):
                await save(files, b"f%d" % index, data)
            await published(files)
            status = files.control.status()
            assert status["committed_versions"] == len(files_data)
            assert status["backpressure_waits"] >= 1
            for index, data in enumerate(files_data):
                assert await load(files, files.tree.lookup(ROOT, b"f%d" % index).ino) == data

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def save_while_puts_fail(files) -> int:
    """Save a file while the store fails its pack PUTs; returns the outbox seq of its events once
    the progress figures name the store's error (the PUT fails, is retried)."""
    await save(files, b"model.pt", os.urandom(3 * MIB))
    upto = files.journal.outbox_tail()
    with trio.fail_after(60):
        while "error" not in files.control.progress():
            await trio.sleep(0.01)
    return upto


def test_progress_is_the_status_sync_polls_and_names_the_store_error(tmp_path):
    """`user.ckptfs.progress` (what `ckptfs sync` polls): the status's outbox_head, uploading and
    pending figures, the store's error while it retries, and small enough for one getxattr."""
    faulty = FaultyStore(MemoryStore())
    lake = lake_on(faulty)
    fault = faulty.fail("put", "packs/", times=None)
    fields = ("outbox_head", "uploading_bytes", "uploading_files", "events_pending")

    async def main():
        mount = mount_on(tmp_path, "only", lake)
        files = mount.files
        async with running(mount):
            upto = await save_while_puts_fail(files)
            progress, status = files.control.progress(), files.control.status()
            assert {name: progress[name] for name in fields} == {name: status[name] for name in fields}
            assert progress["outbox_head"] <= upto and progress["events_pending"] >= 1
            assert progress["error"] == status["last_store_error"]
            fault.times = fault.fired  # the store heals
            await published(files)
            progress, status = files.control.progress(), files.control.status()
            assert progress == {name: status[name] for name in fields} and progress["outbox_head"] > upto
            assert len(json.dumps(progress, separators=(",", ":"))) <= 128

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_progress_after_answers_when_published_at_once_on_an_error_and_else_after_its_wait(tmp_path):
    """`user.ckptfs.progress.after.N` (what `ckptfs sync` asks): the daemon holds the request until
    every event up to N is published, so the waiter learns of it when it happens, not at its next
    poll; at once while an error stands (the caller paces itself); else after PROGRESS_WAIT."""
    faulty = FaultyStore(MemoryStore())
    lake = lake_on(faulty)
    fault = faulty.fail("put", "packs/", times=None)

    async def main():
        mount = mount_on(tmp_path, "only", lake)
        files = mount.files
        async with running(mount):
            upto = await save_while_puts_fail(files)
            started = trio.current_time()
            answer = await files.control.progress_after(upto)
            assert "error" in answer and answer["outbox_head"] <= upto
            assert trio.current_time() == started  # at once: an error stands

            fault.times = fault.fired  # the store heals
            answers, elapsed = [], []
            with trio.fail_after(120):
                while not answers or answers[-1]["outbox_head"] <= upto:
                    started = trio.current_time()
                    answers.append(await files.control.progress_after(upto))
                    elapsed.append(trio.current_time() - started)
            wait = control_module.PROGRESS_WAIT
            assert all(took <= wait + 1e-6 for took in elapsed)  # (the mock clock's float sums)
            # the answer that saw the publication came when it happened, not at the end of its wait
            assert "error" not in answers[-1] and elapsed[-1] < wait - 1e-6

            started = trio.current_time()  # published already: at once
            assert (await files.control.progress_after(upto))["outbox_head"] > upto
            assert trio.current_time() == started
            started = trio.current_time()  # an event nobody queued: the whole wait, then the figures
            answer = await files.control.progress_after(upto + 5)
            assert trio.current_time() - started == pytest.approx(control_module.PROGRESS_WAIT)
            assert answer == files.control.progress()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_several_progress_waiters_at_once_beside_writes_each_learn_of_their_publication(tmp_path):
    """The kernel sends requests concurrently: several `ckptfs sync`s wait on progress.after at
    once while files are still being written; each returns with its own events published."""
    lake = lake_on(MemoryStore())

    async def main():
        mount = mount_on(tmp_path, "only", lake)
        files = mount.files
        answers: dict[int, dict] = {}

        async def waiter(index: int, upto: int) -> None:
            answer = {"outbox_head": 0}
            while answer["outbox_head"] <= upto:
                answer = await files.control.progress_after(upto)
            answers[index] = answer

        async with running(mount):
            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    for index in range(3):
                        await save(files, b"f%d" % index, os.urandom(2 * MIB))
                        nursery.start_soon(waiter, index, files.journal.outbox_tail())
        assert sorted(answers) == [0, 1, 2] and all("error" not in answer for answer in answers.values())

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_sync_waits_on_the_daemon_and_paces_itself_on_an_error_or_an_older_daemon(monkeypatch):
    """`progress_of(root, after=N)` asks the daemon to hold the answer until N is published; while
    an error stands, or from a daemon without that attribute (ENODATA), it asks ten times a second."""
    answers = {"user.ckptfs.progress.after.7": [{"outbox_head": 7, "uploading_bytes": 5, "uploading_files": 1,
                                                 "events_pending": 2, "error": "503 SlowDown"},
                                                {"outbox_head": 8, "uploading_bytes": 0, "uploading_files": 0,
                                                 "events_pending": 0}]}
    asked, slept = [], []

    def getxattr(path, name):
        asked.append(name)
        if name not in answers:
            raise OSError(errno.ENODATA, "No data available")
        return json.dumps(answers[name].pop(0)).encode()

    monkeypatch.setattr(os, "getxattr", getxattr)
    monkeypatch.setattr(time, "sleep", slept.append)
    assert cli.progress_of("/ckpt", after=7)["error"] == "503 SlowDown"
    assert len(slept) == 1 and 0 < slept[0] <= 0.1  # an error: paced
    assert cli.progress_of("/ckpt", after=7)["outbox_head"] == 8
    assert len(slept) == 1  # the daemon held it: no pause of ours
    answers["user.ckptfs.progress"] = [{"outbox_head": 9, "uploading_bytes": 0, "uploading_files": 0,
                                        "events_pending": 0}]
    assert cli.progress_of("/ckpt", after=8)["outbox_head"] == 9  # an older daemon: polled
    assert asked[-2:] == ["user.ckptfs.progress.after.8", "user.ckptfs.progress"] and slept[-1] == 0.1


def test_sync_reads_progress_from_the_status_of_a_daemon_without_it(monkeypatch):
    """A daemon started before `user.ckptfs.progress` existed answers ENODATA: the figures come
    from its status."""
    status = {"outbox_head": 7, "uploading_bytes": 5, "uploading_files": 1, "events_pending": 2,
              "last_store_error": "503 SlowDown", "last_error": None, "pid": 1}

    def getxattr(path, name):
        if name == "user.ckptfs.progress":
            raise OSError(errno.ENODATA, "No data available")
        assert name == "user.ckptfs.status"
        return json.dumps(status).encode()

    monkeypatch.setattr(os, "getxattr", getxattr)
    assert cli.progress_of("/ckpt") == {"outbox_head": 7, "uploading_bytes": 5, "uploading_files": 1,
                                        "events_pending": 2, "error": "503 SlowDown"}


def test_requests_on_the_layer_answer_errno(tmp_path):
    lake = lake_on(MemoryStore())

    async def main():
        mount = mount_on(tmp_path, "only", lake)
        files = mount.files
        history = files.tree.lookup(ROOT, b".versions")
        cases = [
            (lambda: files.tree.mkdir(ROOT, b"x" * 256, 0o755, ME), errno.ENAMETOOLONG),
            (lambda: files.tree.mkdir(ROOT, b"a/b", 0o755, ME), errno.EINVAL),
            (lambda: files.tree.mkdir(history.ino, b"x", 0o755, ME), errno.EROFS),
            (lambda: files.tree.unlink(ROOT, b"missing"), errno.ENOENT),
            (lambda: files.tree.mkdir(ROOT, b".versions", 0o755, ME), errno.EEXIST),
        ]
        for call, code in cases:
            with pytest.raises(FsError) as error:
                call()
            assert error.value.errno == code

    trio.run(main)


class SlowPuts(MemoryStore):
    """Each PUT of a manifest takes 50 ms (a store's first-byte latency); counts how many overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = self.most_in_flight = 0
        self._count = threading.Lock()

    def put(self, key, data, *, if_absent=False):
        if key.startswith("manifests/"):
            with self._count:
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
            time.sleep(0.05)
            with self._count:
                self.in_flight -= 1
        super().put(key, data, if_absent=if_absent)


def test_sealed_versions_upload_concurrently(tmp_path):
    """Many small files closed at once are uploaded side by side, not one after another: each is a
    manifest PUT that waits on the store's latency. (Every worker slept on its own wake-up event
    and only the last one was ever woken: 1,000 small files took 107 s on the S3 model.)"""
    store = SlowPuts()
    lake = lake_on(store)

    async def main():
        mount = mount_on(tmp_path, "only", lake)
        files = mount.files
        async with running(mount):
            for index in range(40):
                await save(files, b"rank-%d" % index, b"shard %d" % index)
            await published(files)
        assert store.most_in_flight >= 8, store.most_in_flight

    trio.run(main)


def test_an_outage_of_ten_minutes_loses_nothing_and_writes_never_wait(tmp_path):
    """Every request fails (temporarily) for ten minutes of trio's MockClock: saves land in the
    cache at once, the status says the store is retrying with a backlog, and once the store answers
    again everything commits and reads back from a fresh mount."""
    faulty = FaultyStore(MemoryStore())
    lake = lake_on(faulty)
    data = [os.urandom(3 * MIB) for _ in range(4)]

    async def main():
        mount = mount_on(tmp_path, "writer", lake)
        files = mount.files
        async with running(mount):
            outage = [faulty.fail(operation) for operation in ("put", "get", "list", "size")]
            started = trio.current_time()
            for index, payload in enumerate(data):
                await save(files, b"during-outage-%d" % index, payload)
            assert trio.current_time() - started < 1, "writes waited for the store"
            while sum(fault.fired for fault in outage) < 20:  # the uploads' threads reach the store
                await trio.to_thread.run_sync(time.sleep, 0.01)
            await trio.sleep(600)
            status = mount.status()
            assert status["store_retrying"] and status["uploading_files"] + status["events_pending"] > 0
            assert status["committed_versions"] == 0
            for fault in outage:
                faulty.faults.remove(fault)
            await published(files)
            assert mount.status()["committed_versions"] == len(data)
        fresh = mount_on(tmp_path, "reader", lake)
        async with running(fresh):
            for index, payload in enumerate(data):
                ino = fresh.files.tree.lookup(ROOT, b"during-outage-%d" % index).ino
                assert await load(fresh.files, ino) == payload

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_large_files_sealed_at_once_upload_side_by_side_without_stalling(tmp_path, monkeypatch):
    """More large versions than cores uploading at once: each one's cutting thread waits on its
    channel while the chunk path catches up. Holding a CPU token meanwhile (as it did) left none for
    reading and hashing once as many versions as cores were being cut: every upload stopped. A cut
    batch of one makes the channels fill after a few chunks."""
    monkeypatch.setattr(uploader_module, "CUT_BATCH", 1)
    lake = lake_on(MemoryStore())
    count = 2 * (os.cpu_count() or 1) + 1
    data = [os.urandom(24 * MIB) for _ in range(count)]

    async def main():
        mount = mount_on(tmp_path, "only", lake)
        files = mount.files
        async with running(mount):
            for index, payload in enumerate(data):
                await save(files, b"shard-%d" % index, payload)
            with trio.fail_after(120):
                await published(files)
            for index, payload in enumerate(data):
                assert await load(files, files.tree.lookup(ROOT, b"shard-%d" % index).ino) == payload

    trio.run(main)


def test_a_read_reply_is_never_a_buffer_the_daemon_reuses(tmp_path):
    """The released pyfuse3 build (scripts/build_pyfuse3_nogil.py) writes a read's reply to the
    kernel without the GIL: every reply must be immutable bytes, or a read-only view of them, so
    that no thread can change it meanwhile (docs/DESIGN.md, "pyfuse3 without the GIL"). Checked for
    a version still staged and for one read back from the lake, within a chunk and across chunks."""
    lake = lake_on(MemoryStore())
    payload = os.urandom(9 * MIB + 12345)

    def immutable(reply) -> bool:
        return type(reply) is bytes or (isinstance(reply, memoryview) and reply.readonly
                                        and type(reply.obj) is bytes)

    async def read_everywhere(files, ino) -> int:
        opened = await files.handles.open(ino, os.O_RDONLY)
        replies = 0
        try:
            for offset, size in [(0, MIB), (MIB, MIB), (100, 4096), (3 * MIB - 10, 2 * MIB), (0, len(payload))]:
                reply = await files.handles.read(opened.fh, offset, size)
                assert immutable(reply), (offset, size, type(reply), type(getattr(reply, "obj", None)))
                assert bytes(reply) == payload[offset:offset + size]
                replies += 1
        finally:
            files.handles.release(opened.fh)
        return replies

    async def main():
        mount = mount_on(tmp_path, "writer", lake)
        async with running(mount):
            ino = await save(mount.files, b"model.pt", payload)
            assert await read_everywhere(mount.files, ino) == 5  # the staged version
            await published(mount.files)
        reader = mount_on(tmp_path, "reader", lake)
        async with running(reader):
            assert await read_everywhere(reader.files, reader.files.tree.lookup(ROOT, b"model.pt").ino) == 5

    trio.run(main)
