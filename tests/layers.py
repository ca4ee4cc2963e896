"""A mount assembled on a lake in the test's tmp_path, without a kernel: the daemon's own assembly
(ckptfs/mount.py) on a cache dir of its own."""

from __future__ import annotations

import time

from ckptfs.cache.chunkcache import ChunkCache
from ckptfs.cache.journal import Journal
from ckptfs.cache.rebuild import prepare_journal
from ckptfs.cache.staging import Staging
from ckptfs.lake import Lake
from ckptfs.mount import Mount, Settings, assemble


def mount_on(tmp_path, name: str, lake: Lake, *, staging_limit: int | None = None, snapshot_every: int = 1000,
             durability: str = "local") -> Mount:
    """A mount with its cache dir `tmp_path/name` (rebuilt from the lake if new, repaired as after a
    crash if not), uploads at seal only, following on demand, and a staging budget if
    `staging_limit` is given. Start its engine in the test's nursery (`await
    nursery.start(mount.run_engine)`) as needed."""
    cache = tmp_path / name
    cache.mkdir(exist_ok=True)
    journal = Journal(str(cache / "journal.sqlite"))
    staging = Staging(str(cache / "staging"))
    listed_at_ns = time.time_ns()
    view = lake.read_log()  # what the daemon reads at start: a snapshot and the segments after it
    # What the daemon does: rebuild a new cache dir from the lake, repair an existing one.
    name, replayed = prepare_journal(journal, staging, lake, view, new_mount_id=name)
    settings = Settings(durability=durability, staging_budget=staging_limit, refresh_interval=0,
                        snapshot_segments=snapshot_every)
    mount = assemble(lake, journal, staging, ChunkCache(str(cache / "chunks"), 1 << 30),
                     mount_id=name, settings=settings)
    mount.files.remote.start_from(view.base, view.events, view.cursors, view.horizon_ns, replayed=replayed,
                                  base_covers=view.base_covers)
    mount.follower.start_from(view.cursors, listed_at_ns)
    lake.register_mount(name)
    return mount
