"""`.at/<time>/` (the tree as it was at an instant) and `.tags/<name>/` at the layer, on a memory
lake, through the daemon's own assembly."""

from __future__ import annotations

import datetime
import os
import time

import trio

from ckptfs.files.history import version_name
from ckptfs.files.past import parse_instant
from ckptfs.lake import Lake, keeps
from ckptfs.store import RetryingStore
from ckptfs.store.memory import MemoryStore
from tests.layers import ME, ROOT, load, mount_on, published, running, save


def names(files, ino: int) -> list[bytes]:
    return [name for name, _ in files.tree.listing(ino) if name not in (b".", b"..")]


def test_at_shows_the_whole_tree_as_it_was_and_tags_show_what_they_keep(tmp_path):
    lake = Lake(RetryingStore(MemoryStore(), first_delay=0.001, max_delay=0.01))
    lake.open()

    async def main():
        mount = mount_on(tmp_path, "a" * 16, lake)
        files = mount.files
        async with running(mount):
            run = files.tree.mkdir(ROOT, b"run", 0o755, ME).ino
            await save(files, b"a.pt", b"first")
            time.sleep(0.002)
            before = time.time_ns()
            time.sleep(0.002)
            await save(files, b"a.pt", b"second")
            files.tree.unlink(ROOT, b"a.pt")
            opened, _ = files.handles.create(run, b"b.pt", 0o644, os.O_WRONLY, ME)
            await files.handles.write(opened.fh, 0, b"later")
            files.handles.release(opened.fh)
            await published(files)
            at_root = files.tree.lookup(ROOT, b".at").ino
            assert b".at" not in names(files, ROOT)  # reachable by name, never listed
            assert len(names(files, at_root)) >= 4  # the instants something changed
            moment = datetime.datetime.fromtimestamp(before / 1e9, datetime.UTC)
            for spelling in (version_name(before), moment.isoformat(timespec="microseconds")):
                past = files.tree.lookup(at_root, spelling.encode()).ino
                assert names(files, past) == [b"a.pt"], spelling  # run/ held nothing yet
                assert await load(files, files.tree.lookup(past, b"a.pt").ino) == b"first"
            now = files.tree.lookup(at_root, version_name(time.time_ns()).encode()).ino
            assert names(files, now) == [b"run"]
            assert await load(files, files.tree.lookup(files.tree.lookup(now, b"run").ino, b"b.pt").ino) == b"later"
            assert parse_instant(b"not a time") is None

            tree = lake.read_namespace()
            keeps.put_tag(lake.store, keeps.Tag("best", time.time_ns(), b"run",
                                                ((b"run/b.pt", tree.entries[b"run/b.pt"].manifest),)))
            await mount.following.refresh(sweep=True)
            tags = files.tree.lookup(ROOT, b".tags").ino
            assert names(files, tags) == [b"best"]
            best = files.tree.lookup(tags, b"best").ino
            assert names(files, best) == [b"b.pt"]
            assert await load(files, files.tree.lookup(best, b"b.pt").ino) == b"later"

    trio.run(main)
