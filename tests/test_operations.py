"""The Operations object called directly, without a kernel mount: fast checks of the fs layer logic."""

import errno
import os
from dataclasses import dataclass

import pyfuse3
import pytest
import trio

from ckptfs.cache.chunkcache import ChunkCache
from ckptfs.cache.journal import COMMITTED, Journal
from ckptfs.cache.staging import Staging
from ckptfs.daemon import rebuild_from_lake
from ckptfs.engine.fetcher import Fetcher
from ckptfs.engine.uploader import Uploader
from ckptfs.fs.operations import Operations
from ckptfs.lake import Lake
from ckptfs.store import LocalDirStore

ROOT = pyfuse3.ROOT_INODE


@dataclass
class Context:
    """The request context the kernel would pass: who is asking."""
    uid: int = 0
    gid: int = 0
    pid: int = 0
    umask: int = 0o022


def build(tmp_path, name: str, lake: Lake) -> Operations:
    cache = tmp_path / name
    cache.mkdir()
    journal = Journal(str(cache / "journal.sqlite"))
    if journal.get_meta("mount_id") is None:
        rebuild_from_lake(journal, lake)
    staging = Staging(str(cache / "staging"))
    uploader = Uploader(journal, staging, lake, name)
    fetcher = Fetcher(lake, ChunkCache(str(cache / "chunks"), 1 << 30))
    return Operations(journal, staging, uploader, fetcher, mount_id=name)


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
            await nursery.start(ops.uploader.run)
            await nursery.start(ops.fetcher.run)
            directory = await ops.mkdir(ROOT, b"run", 0o755, Context())
            ino = await write_file(ops, directory.st_ino, b"model.pt", payload)
            assert await read_file(ops, ino) == payload
            await ops.rename(directory.st_ino, b"model.pt", ROOT, b"moved.pt", 0, Context())
            with pytest.raises(pyfuse3.FUSEError) as error:
                await ops.lookup(directory.st_ino, b"model.pt", Context())
            assert error.value.errno == errno.ENOENT
            await ops.uploader.wait_published(ops.journal.outbox_tail())
            version = ops.journal.version(ops.journal.inode(ino).version)
            assert version.state == COMMITTED
            nursery.cancel_scope.cancel()

        fresh = build(tmp_path, "second", lake)
        async with trio.open_nursery() as nursery:
            await nursery.start(fresh.fetcher.run)
            attributes = await fresh.lookup(ROOT, b"moved.pt", Context())
            assert attributes.st_size == len(payload)
            assert await read_file(fresh, attributes.st_ino) == payload
            history = await fresh.lookup(ROOT, b".versions", Context())
            run = await fresh.lookup(history.st_ino, b"run", Context())
            old = await fresh.lookup(run.st_ino, b"model.pt", Context())
            handle = await fresh.opendir(old.st_ino, Context())
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
