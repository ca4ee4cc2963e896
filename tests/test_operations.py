"""The Operations object called directly, without a kernel mount: fast checks of the fs layer logic."""

import errno
import json
import os
import sqlite3
from dataclasses import dataclass

import pyfuse3
import pytest
import trio

from ckptfs.cache.journal import COMMITTED, OPEN, SEALED, Journal
from ckptfs.fs.operations import Operations
from ckptfs.lake import Lake
from ckptfs.lake.packs import LOOSE, Location
from ckptfs.store import LocalDirStore
from tests.layers import mount_on

ROOT = pyfuse3.ROOT_INODE


@dataclass
class Context:
    """The request context the kernel would pass: who is asking."""
    uid: int = 0
    gid: int = 0
    pid: int = 0
    umask: int = 0o022


@dataclass
class Fields:
    """Which attributes a SETATTR changes (pyfuse3's SetattrFields cannot be built from Python)."""
    update_size: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_mtime: bool = False
    update_atime: bool = False
    update_ctime: bool = False


def build(tmp_path, name: str, lake: Lake) -> Operations:
    return Operations(mount_on(tmp_path, name, lake))


async def write_file(ops: Operations, parent: int, name: bytes, data: bytes) -> int:
    info, attributes = await ops.create(parent, name, 0o644, os.O_WRONLY, Context())
    assert await ops.write(info.fh, 0, data) == len(data)
    await ops.flush(info.fh)
    await ops.release(info.fh)
    return attributes.st_ino


async def read_file(ops: Operations, ino: int) -> bytes:
    info = await ops.open(ino, os.O_RDONLY, Context())
    try:
        return await ops.read(info.fh, 0, 1 << 30)
    finally:
        await ops.release(info.fh)


@pytest.fixture
def lake(tmp_path) -> Lake:
    value = Lake(LocalDirStore(str(tmp_path / "lake")))
    value.open()
    return value


def test_write_upload_and_read_back_from_a_fresh_journal(tmp_path, lake):
    payload = os.urandom(3_000_000)

    async def main():
        ops = build(tmp_path, "first", lake)
        async with trio.open_nursery() as nursery:
            await nursery.start(ops.mount.run_engine)
            directory = await ops.mkdir(ROOT, b"run", 0o755, Context())
            ino = await write_file(ops, directory.st_ino, b"model.pt", payload)
            assert await read_file(ops, ino) == payload
            await ops.rename(directory.st_ino, b"model.pt", ROOT, b"moved.pt", 0, Context())
            with pytest.raises(pyfuse3.FUSEError) as error:
                await ops.lookup(directory.st_ino, b"model.pt", Context())
            assert error.value.errno == errno.ENOENT
            await ops.files.engine.wait_published(ops.files.journal.outbox_tail())
            version = ops.files.journal.version(ops.files.journal.inode(ino).version)
            assert version.state == COMMITTED
            nursery.cancel_scope.cancel()

        fresh = build(tmp_path, "second", lake)
        async with trio.open_nursery() as nursery:
            await nursery.start(fresh.mount.fetcher.run)
            attributes = await fresh.lookup(ROOT, b"moved.pt", Context())
            assert attributes.st_size == len(payload)
            assert await read_file(fresh, attributes.st_ino) == payload
            history = await fresh.lookup(ROOT, b".versions", Context())
            # Renamed right after it was written: its version is folded at the old path and lives at the new.
            run = await fresh.lookup(history.st_ino, b"run", Context())
            handle = await fresh.opendir(run.st_ino, Context())
            assert fresh._listings[handle] == []
            moved = await fresh.lookup(history.st_ino, b"moved.pt", Context())
            handle = await fresh.opendir(moved.st_ino, Context())
            (name, version_ino), = fresh._listings[handle]
            assert await read_file(fresh, version_ino) == payload
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_versions_tree_refuses_writes(tmp_path, lake):

    async def main():
        ops = build(tmp_path, "only", lake)
        await write_file(ops, ROOT, b"f", b"data")
        history = await ops.lookup(ROOT, b".versions", Context())
        for call in (ops.create(history.st_ino, b"x", 0o644, os.O_WRONLY, Context()),
                     ops.mkdir(history.st_ino, b"x", 0o755, Context()),
                     ops.unlink(history.st_ino, b"f", Context())):
            with pytest.raises(pyfuse3.FUSEError) as error:
                await call
            assert error.value.errno == errno.EROFS

    trio.run(main)


def test_bad_names_are_rejected(tmp_path, lake):

    async def main():
        ops = build(tmp_path, "only", lake)
        for name, code in ((b"x" * 256, errno.ENAMETOOLONG), (b"a/b", errno.EINVAL), (b"a\0b", errno.EINVAL)):
            with pytest.raises(pyfuse3.FUSEError) as error:
                await ops.mkdir(ROOT, name, 0o755, Context())
            assert error.value.errno == code

    trio.run(main)


def test_progress_after_names_an_outbox_seq_and_answers_progress(tmp_path, lake):
    """`user.ckptfs.progress.after.N` on the root: the progress figures (compact JSON: one 128-byte
    getxattr), once N is published; a name whose N is not a number is EINVAL."""

    async def main():
        ops = build(tmp_path, "only", lake)
        answer = json.loads(await ops.getxattr(ROOT, b"user.ckptfs.progress.after.0"))
        assert answer == ops.control.progress() and answer["outbox_head"] > 0
        for bad in (b"user.ckptfs.progress.after.", b"user.ckptfs.progress.after.-1", b"user.ckptfs.progress.after.x"):
            with pytest.raises(pyfuse3.FUSEError) as error:
                await ops.getxattr(ROOT, bad)
            assert error.value.errno == errno.EINVAL

    trio.run(main)


MIB = 1 << 20


def test_a_spilled_version_still_uploading_reads_back_and_copies_whole(tmp_path, lake):
    """A file spilled while written (its prefix punched out of the staging file), then sealed while
    no upload runs: reads of it and a new version copied from it must get the prefix from the lake."""
    data = os.urandom(40 * MIB)
    ops = Operations(mount_on(tmp_path, "spill", lake, staging_limit=16 * MIB))
    journal, staging, fetcher, uploader = ops.files.journal, ops.files.staging, ops.mount.fetcher, ops.mount.uploader

    async def main():
        async with trio.open_nursery() as outer:
            await outer.start(fetcher.run)
            async with trio.open_nursery() as uploads:
                await uploads.start(uploader.run)
                info, attributes = await ops.create(ROOT, b"big.ckpt", 0o644, os.O_WRONLY, Context())
                for offset in range(0, len(data), MIB):
                    assert await ops.write(info.fh, offset, data[offset:offset + MIB]) == MIB
                uploads.cancel_scope.cancel()  # nothing uploads from here on
            ino = attributes.st_ino
            await ops.flush(info.fh)
            await ops.release(info.fh)
            sealed = journal.version(journal.inode(ino).version)
            assert sealed.state == SEALED
            assert sealed.hole_end > 16 * MIB and staging.holes[sealed.id] == sealed.hole_end
            assert await read_file(ops, ino) == data

            info = await ops.open(ino, os.O_RDWR, Context())  # no O_TRUNC: a copy of the sealed version
            assert await ops.write(info.fh, len(data), b"tail") == 4
            await ops.flush(info.fh)
            await ops.release(info.fh)
            copy = journal.version(journal.inode(ino).version)
            assert copy.id != sealed.id and copy.hole_end == 0 and copy.id not in staging.holes
            assert os.pread(staging.fd(copy.id), len(data) + 4, 0) == data + b"tail"
            assert await read_file(ops, ino) == data + b"tail"
            outer.cancel_scope.cancel()

    trio.run(main)


def test_a_schema_1_journal_is_migrated_to_schema_4(tmp_path):
    path = str(tmp_path / "journal.sqlite")
    Journal(path).close()
    database = sqlite3.connect(path)
    for column in ("prefix_end", "hole_end", "prefix_new", "prefix_stored"):
        database.execute(f"ALTER TABLE versions DROP COLUMN {column}")
    database.execute("DROP TABLE prefix_chunks")
    database.execute("DROP INDEX inodes_by_node")
    for column in ("rdev", "node"):
        database.execute(f"ALTER TABLE inodes DROP COLUMN {column}")
    database.execute("ALTER TABLE versions DROP COLUMN target")
    database.execute("DROP TABLE known_chunks")
    database.execute("CREATE TABLE known_chunks(id BLOB PRIMARY KEY) WITHOUT ROWID")
    database.execute("INSERT INTO known_chunks(id) VALUES (?)", (b"k" * 16,))
    database.execute("UPDATE meta SET value='1' WHERE key='schema'")
    database.commit()
    database.close()
    journal = Journal(path)
    assert journal.get_meta("schema") == "4"
    # Chunks known before packs are loose objects; a location learnt later replaces that, not the reverse.
    assert journal.chunk_location(b"k" * 16) == LOOSE
    journal.add_chunk_locations([(b"k" * 16, Location(b"p" * 16, 7, 40))])
    journal.add_chunk_locations([(b"k" * 16, LOOSE), (b"n" * 16, LOOSE)])
    assert journal.chunk_location(b"k" * 16) == Location(b"p" * 16, 7, 40)
    assert journal.chunk_location(b"n" * 16) == LOOSE and journal.chunk_location(b"u" * 16) is None
    assert journal.inode(1).rdev == 0 and journal.inode(1).node is None
    version = journal.new_version(None)
    journal.extend_prefix(version, [(b"c" * 16, 5)], first_seq=0, end=5, hole_end=0, new_bytes=5, stored_bytes=3)
    assert journal.version(version).prefix_end == 5
    assert journal.prefix(version) == ([(b"c" * 16, 5)], 5, 3)
    journal.close()


def test_concurrent_writes_and_truncates_on_a_sealed_file_share_one_new_version(tmp_path, lake):
    """The kernel sends a mapping's write-back as concurrent WRITEs; each may find the version
    sealed. The copy-on-write awaits, so only one of them may start the new version and all of them
    must land in it (the bug: every WRITE copied on its own and only the last copy became the file)."""
    size = 8 * MIB
    expected = bytearray(b"\x00" * size)

    async def main():
        ops = build(tmp_path, "only", lake)
        ino = await write_file(ops, ROOT, b"f", bytes(size))
        first = ops.files.journal.inode(ino).version
        handles = [(await ops.open(ino, os.O_RDWR, Context())).fh for _ in range(4)]

        async def write_blocks(number: int, fh: int) -> None:
            for offset in range(number * MIB, size, len(handles) * MIB):
                assert await ops.write(fh, offset, bytes([number + 1]) * MIB) == MIB
                expected[offset:offset + MIB] = bytes([number + 1]) * MIB

        async with trio.open_nursery() as nursery:
            for number, fh in enumerate(handles):
                nursery.start_soon(write_blocks, number, fh)
        for fh in handles:
            await ops.flush(fh)
            await ops.release(fh)
        versions = ops.files.journal.history(b"f")
        assert [version for _, version in versions][0] == first and len(versions) == 2
        assert ops.files.journal.versions_in_state(OPEN) == []
        assert await read_file(ops, ino) == bytes(expected)

        # A truncate racing with writes into the sealed file: one new version holds both.
        handle = (await ops.open(ino, os.O_RDWR, Context())).fh

        async def truncate():
            attributes = pyfuse3.EntryAttributes()
            attributes.st_size = size // 2
            await ops.setattr(ino, attributes, Fields(update_size=True), handle, Context())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(truncate)
            nursery.start_soon(ops.write, handle, 0, b"\xff" * MIB)
        await ops.flush(handle)
        await ops.release(handle)
        assert len(ops.files.journal.history(b"f")) == 3
        assert ops.files.journal.versions_in_state(OPEN) == []
        data = await read_file(ops, ino)
        assert data[:MIB] == b"\xff" * MIB and data[MIB:] == bytes(expected[MIB:size // 2])

    trio.run(main)


def test_open_versions_without_a_handle_are_sealed_or_dropped_with_a_warning(tmp_path, lake, caplog):
    async def main():
        ops = build(tmp_path, "only", lake)
        info, attributes = await ops.create(ROOT, b"f", 0o644, os.O_WRONLY, Context())
        await ops.write(info.fh, 0, b"data")
        assert ops.files.lifecycle.seal_unheld_versions() == 0  # a handle is open: left alone
        stray = ops.files.journal.new_version(attributes.st_ino)  # a copy a crash interrupted
        ops.files.staging.create(stray)
        del ops.handles.table[info.fh]  # the handle vanished without a release (a missed close)
        ops.files.lifecycle.open_count.pop(attributes.st_ino)
        with caplog.at_level("INFO", logger="ckptfs.files.lifecycle"):
            assert ops.files.lifecycle.seal_unheld_versions() == 1
        assert ops.files.journal.versions_in_state(OPEN) == []
        assert ops.files.journal.version(ops.files.journal.inode(attributes.st_ino).version).state == SEALED
        assert not ops.files.staging.exists(stray)
        assert any(f"dropping open version {stray:x}" in record.message and record.levelname == "WARNING"
                   for record in caplog.records)
        assert await read_file(ops, attributes.st_ino) == b"data"

    trio.run(main)
