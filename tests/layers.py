"""The file system layer assembled on a lake in the test's tmp_path, without a kernel mount."""

from __future__ import annotations

from ckptfs.cache.chunkcache import ChunkCache
from ckptfs.cache.journal import Journal
from ckptfs.cache.staging import Staging
from ckptfs.daemon import rebuild_from_lake
from ckptfs.engine.evictor import Evictor
from ckptfs.engine.fetcher import Fetcher
from ckptfs.engine.spill import Spill
from ckptfs.engine.uploader import Uploader
from ckptfs.files import FileSystem
from ckptfs.lake import Lake


def files_on(tmp_path, name: str, lake: Lake, *, staging_limit: int | None = None) -> FileSystem:
    """A FileSystem with its cache dir `tmp_path/name` (rebuilt from the lake if new), uploads at
    seal only, and a staging budget if `staging_limit` is given. Start its uploader and fetcher
    tasks in the test's nursery as needed."""
    cache = tmp_path / name
    cache.mkdir(exist_ok=True)
    journal = Journal(str(cache / "journal.sqlite"))
    view = lake.read_log()  # what the daemon reads at start: a snapshot and the segments after it
    replayed = None
    if journal.get_meta("mount_id") is None:
        replayed = rebuild_from_lake(journal, lake, view)
        journal.set_meta("mount_id", name)
    staging = Staging(str(cache / "staging"))
    fetcher = Fetcher(lake, ChunkCache(str(cache / "chunks"), 1 << 30))
    spill = Spill(journal, staging, fetcher)
    uploader = Uploader(journal, staging, lake, name, round_bytes=0, spill=spill)
    evictor = Evictor(journal, staging, staging_limit) if staging_limit else None
    if evictor is not None:
        uploader.on_committed = evictor.committed
    files = FileSystem(journal, staging, uploader, fetcher, mount_id=name, evictor=evictor, spill=spill)
    files.remote.start_from(view.base, view.events, view.cursors, view.horizon_ns, replayed=replayed,
                             base_covers=view.base_covers)
    return files
