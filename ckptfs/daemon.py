"""The mount daemon: validate the configuration, open the cache dir, repair after a crash or rebuild
from the lake when the cache is empty (cache/rebuild.py), assemble the mount (ckptfs/mount.py), run
the FUSE loop with the engine tasks, and drain on unmount.

Start-up repair (every crash state; docs/DESIGN.md has the reasoning):
* OPEN versions left by a killed daemon belong to writers that are gone: sealed with the staging
  file's size if a path still names them, dropped with a log line otherwise
  (`Lifecycle.seal_unheld_versions`, which also runs every second and at unmount).
* Inodes no entry names (unlinked while open) are dropped.
* Staging files no version row names are removed; committed versions whose staging file is missing
  become remote-only. A damaged journal, or a version waiting for upload whose staging file is
  missing or short, stops the mount with the repair command (`cache/check.py`).
* A namespace segment that was being written is re-sent with the same seq and the same events.
* SEALED versions are queued for upload again (chunks and manifests are content-addressed, so
  re-uploading is idempotent).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import math
import os
import shutil
import signal
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import trio

from ckptfs import systemd
from ckptfs.cache.check import check_cache, drop_unsynced_losses, lock_cache_dir
from ckptfs.cache.chunkcache import ChunkCache
from ckptfs.cache.journal import OPEN, SEALED, Journal
from ckptfs.cache.rebuild import prepare_journal
from ckptfs.cache.staging import Staging
from ckptfs.engine.prefix import MIN_ROUND_BYTES, default_round_bytes
from ckptfs.engine.snapshots import SNAPSHOT_SEGMENTS
from ckptfs.engine.uploader import Uploader
from ckptfs.errors import ConfigError
from ckptfs.files import FileSystem
from ckptfs.fs.operations import KernelCaches, Operations
from ckptfs.lake import Lake
from ckptfs.lake.gclock import boot_id
from ckptfs.libc import set_heap_thresholds, syncfs
from ckptfs.mount import Mount, Settings, assemble
from ckptfs.store import ObjectStore, RetryingStore, open_store

log = logging.getLogger(__name__)


def ckptfs_home() -> str:
    return os.environ.get("CKPTFS_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share", "ckptfs")


@dataclass
class MountConfig:
    mountpoint: str
    store_url: str | None = None
    cache_dir: str | None = None
    cache_size: int = 50 * 1024**3
    endpoint_url: str | None = None
    s3_timeout: float = 60
    metrics_address: str | None = None
    durability: str = "local"
    allow_other: bool = False
    drain: bool = True
    upload_round_bytes: int | None = None  # None: on where the machine has cores to spare
    refresh_interval: float = 5.0  # seconds between reads of what other mounts published; 0: on demand
    snapshot_segments: int = SNAPSHOT_SEGMENTS  # write a namespace snapshot when the newest is this far behind
    lake_settings: dict[str, int] = field(default_factory=dict)  # lake.json fields, if this mount creates it
    gc_every_s: float = 0  # run `ckptfs gc` from this mount this often (0: never)
    reset_cache_dir: bool = False  # empty a cache dir of another lake (if it holds nothing unpublished)
    drain_timeout: float = 25.0  # on SIGTERM, upload for at most this long (spot nodes get 30 s)

    def resolve(self) -> None:
        self.mountpoint = os.path.abspath(self.mountpoint)
        if self.store_url is None:
            self.store_url = "file://" + os.path.join(ckptfs_home(), "lake")
        if self.cache_dir is None:
            digest = hashlib.sha256(f"{self.store_url}\0{self.mountpoint}".encode()).hexdigest()[:16]
            self.cache_dir = os.path.join(ckptfs_home(), "cache", digest)
        self.cache_dir = os.path.abspath(self.cache_dir)
        if self.upload_round_bytes is None:
            self.upload_round_bytes = default_round_bytes()
        if self.snapshot_segments < 1:
            raise ConfigError("--snapshot-every must be at least 1 segment")
        if self.drain_timeout < 0:
            raise ConfigError("--drain-timeout must be 0 or more seconds")
        if self.refresh_interval < 0:
            raise ConfigError(f"--refresh {self.refresh_interval:g}: seconds between refreshes, 0 or more "
                              "(0: only at start and on `ckptfs refresh`)")
        if self.cache_size <= 0:
            raise ConfigError("--cache-size must be more than 0 (e.g. 200G)")
        if self.metrics_address:
            from ckptfs.metrics import check_address
            check_address(self.metrics_address)
        if self.upload_round_bytes and self.upload_round_bytes < MIN_ROUND_BYTES:
            raise ConfigError(f"--upload-while-writing must be 0 (off) or at least {MIN_ROUND_BYTES >> 20}M")


def check_mountpoint(path: str) -> None:
    if not os.path.exists(path):
        raise ConfigError(f"mount point {path} does not exist")
    if not os.path.isdir(path):
        raise ConfigError(f"mount point {path} is not a directory")
    if os.path.ismount(path) and _is_fuse_mount(path):
        raise ConfigError(f"{path} is already a mount point")
    if os.listdir(path):
        raise ConfigError(f"mount point {path} is not empty")


def _is_fuse_mount(path: str) -> bool:
    with open("/proc/mounts") as mounts:
        return any(line.split()[1] == path and "fuse" in line.split()[2] for line in mounts)


def check_cache_dir(path: str) -> None:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create cache dir {path}: {error.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"cache dir {path} is not writable")
    mode = os.stat(path).st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"cache dir {path} is writable by other users (mode {stat.S_IMODE(mode):o}); "
                          "make it 0700")
    os.chmod(path, 0o700)
    lock_cache_dir(path).close()  # in use by another daemon: refused before anything is created


START_RETRY_SECONDS = 10


def open_lake(config: MountConfig, store: ObjectStore | None = None) -> Lake:
    """Check the store is reachable and holds a lake we can read; a clear error otherwise. A slow or
    dropped response is asked again for START_RETRY_SECONDS (a store that answers 1 in 5 requests
    late must not fail the mount), a permanent error (no bucket, no credentials) is reported at once.
    Returns the lake on a store that retries as long as a running mount does."""
    inner = store or open_store(config.store_url, endpoint_url=config.endpoint_url, timeout=config.s3_timeout)
    starting = RetryingStore(inner, give_up_after=START_RETRY_SECONDS, max_delay=2, retry_log_level=logging.DEBUG)
    if store is None:
        starting.check_access()
    opened = Lake(starting)
    opened.open(create=True, settings=config.lake_settings)
    return opened.through(RetryingStore(inner, max_delay=10))


def bind_cache_dir(cache: CacheDir, lake: Lake, config: MountConfig) -> CacheDir:
    """A cache dir belongs to one lake (its journal records the lake's creation time, its identity):
    another lake's is refused with both names, or with --reset-cache-dir emptied, unless it holds
    changes that lake has not received yet."""
    identity = str(lake.created_ns)
    known, known_url = cache.journal.get_meta("lake_created_ns"), cache.journal.get_meta("lake_url")
    if known is not None and known != identity:
        other = known_url or "another lake"
        if not config.reset_cache_dir:
            cache.close()
            raise ConfigError(f"cache dir {config.cache_dir} belongs to {other}, not {config.store_url}: give this "
                              "mount its own --cache-dir (or --reset-cache-dir to empty this one)")
        waiting = cache.journal.outbox_length() + len(cache.journal.versions_in_state(OPEN)) + len(
            cache.journal.versions_in_state(SEALED))
        if waiting:
            cache.close()
            raise ConfigError(f"cache dir {config.cache_dir} holds {waiting} changes not yet in {other}: mount it on "
                              "that lake and let them upload (`ckptfs unmount` waits for them) before resetting it")
        cache.close()
        for name in os.listdir(config.cache_dir):
            if name != "lock":
                target = os.path.join(config.cache_dir, name)
                shutil.rmtree(target) if os.path.isdir(target) else os.unlink(target)
        log.warning("emptied cache dir %s of %s for %s", config.cache_dir, other, config.store_url)
        cache = CacheDir(config.cache_dir, config.cache_size)
    cache.journal.set_meta("lake_created_ns", identity)
    cache.journal.set_meta("lake_url", config.store_url or "")
    cache.journal.commit(durable=True)
    return cache


class CacheDir:
    """The cache dir's contents, locked against a second daemon."""

    def __init__(self, path: str, cache_size: int) -> None:
        self.path = path
        self._lock = lock_cache_dir(path)
        for line in drop_unsynced_losses(path):
            log.warning("after a crash: %s", line)
        problems = check_cache(path)
        if problems:
            self._lock.close()
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ConfigError(f"cache dir {path}: {problems[0].detail}{more}; "
                              f"run `ckptfs fsck --cache-dir {path} --repair`")
        self.journal = Journal(os.path.join(path, "journal.sqlite"))
        # "running" holds the boot of the daemon using the cache dir, and goes at a clean close. Left
        # there by another boot, the machine lost power (or rebooted) with unsynced data on the cache
        # disk: prepare_journal then distrusts staging copies no fsync made durable.
        running, this_boot = self.journal.get_meta("running"), boot_id() or "unknown"
        self.rebooted = running is not None and running != this_boot
        self.journal.set_meta("running", this_boot)
        self.journal.commit(durable=True)
        self.staging = Staging(os.path.join(path, "staging"))
        # A quarter of the budget caches fetched chunks, a sixteenth (at most 64 MiB) is left to the
        # journal and its WAL, the rest holds staging files (dirty data is never evicted: it waits
        # for uploads, or spills to the lake while written, engine/spill.py).
        self.chunk_budget = cache_size // 4
        self.staging_budget = cache_size - self.chunk_budget - min(cache_size // 16, 64 << 20)
        self.chunks = ChunkCache(os.path.join(path, "chunks"), self.chunk_budget)

    def close(self) -> None:
        self.staging.close()
        syncfs(self.path)  # what the staging files and the chunk cache hold is on the disk now
        self.journal.delete_meta("running")
        self.journal.close()
        self._lock.close()


READ_AHEAD_KB = 1024


def read_ahead_knob(mountpoint: str) -> str:
    """The sysfs file of the mount's read-ahead (found without stat(), which would ask this daemon)."""
    device = None
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 4 and fields[4] == mountpoint:
                device = fields[2]
    if device is None:
        raise OSError(f"{mountpoint} is not in /proc/self/mountinfo")
    return f"/sys/class/bdi/{device}/read_ahead_kb"


async def set_read_ahead(mountpoint: str, kb: int) -> None:
    """Let the kernel read ahead `kb` of a sequentially read file, in requests of up to 1 MiB.
    The default for a FUSE mount is 128 KiB: a warm read then went at a third of the local disk's
    speed, every 128 KiB a round trip through this process (docs/DESIGN.md, "Warm reads"). The
    kernel sets it when it gets the answer to FUSE's INIT, so this writes it again until it holds.
    Needs root (a sysfs file); otherwise the default stays, with a note in the log."""
    try:
        knob = read_ahead_knob(mountpoint)
        for _ in range(20):
            with open(knob, "w") as file:
                file.write(f"{kb}\n")
            await trio.sleep(0.25)
            with open(knob) as file:
                if int(file.read()) == kb:
                    return
        raise OSError(f"{knob} did not keep {kb}")
    except (OSError, ValueError) as error:
        log.info("kept the kernel's read-ahead for %s (%s)", mountpoint, error)


async def learn_known_chunks(lake: Lake, journal: Journal) -> None:
    """A new cache dir learns which loose chunks the lake holds (lakes of format 1 to 3), so that
    saving content already there uploads nothing. Chunks in packs are learnt from the manifests the
    mount reads (`Journal.learn_manifest`): listing packs would not say what is in them. One LIST
    per 1,000 chunks: a large lake takes a while, so this runs after the mount is ready."""
    started = time.monotonic()
    try:
        found = await trio.to_thread.run_sync(lambda: list(lake.chunk_ids()))
    except Exception as error:  # noqa: BLE001 - an optimisation: never fatal
        log.warning("could not list the lake's chunks (%s); dedup against them waits for their uploads", error)
        return
    for start in range(0, len(found), 10_000):
        journal.add_known_chunks(found[start:start + 10_000])
        await trio.sleep(0)
    log.info("learnt the lake's %d chunks in %.1f s", len(found), time.monotonic() - started)


async def drain(uploader: Uploader, journal: Journal) -> None:
    """Wait until the outbox is empty, logging progress every few seconds."""
    last_log = 0.0
    uploader.publisher.hurry(journal.outbox_tail())
    while journal.outbox_length() > 0:
        if time.monotonic() - last_log > 5:
            log.info("draining: %d events, %d bytes waiting for upload", journal.outbox_length(),
                     uploader.pending_bytes())
            last_log = time.monotonic()
        with trio.move_on_after(1):
            await uploader.wait_for_progress()
    log.info("upload queue drained")


def serve(config: MountConfig, on_ready: Callable[[], None] = lambda: None, *,
          store: ObjectStore | None = None, lake: Lake | None = None) -> None:
    """Mount and serve until unmounted. Raises ConfigError before mounting if anything is wrong.
    `lake`: one `open_lake` already opened in this process (`ckptfs mount --foreground` checks the
    store on the terminal first), not opened again: a HEAD and a GET fewer at every start."""
    config.resolve()
    set_heap_thresholds()
    check_mountpoint(config.mountpoint)
    check_cache_dir(config.cache_dir)
    lake = lake or open_lake(config, store)
    cache = bind_cache_dir(CacheDir(config.cache_dir, config.cache_size), lake, config)
    # The mount announces itself (mounts/, before its first segment) while it reads the lake: two
    # rounds of requests off every start.
    mount_id = cache.journal.get_meta("mount_id") or uuid.uuid4().hex[:16]
    announcing = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="register")
    registered = announcing.submit(lake.register_mount, mount_id)
    announcing.shutdown(wait=False)
    try:
        started, listed_at_ns = time.monotonic(), time.time_ns()
        view = lake.read_log()  # a snapshot and the segments after it (lake/snapshot.py)
        log.info("read the lake in %.1f s: %s and %d segments after it", time.monotonic() - started,
                 view.snapshot_key or "no snapshot", view.segments_read)
        prepared_id, rebuilt = prepare_journal(cache.journal, cache.staging, lake, view, new_mount_id=mount_id,
                                               rebooted=cache.rebooted)
        if prepared_id != mount_id:  # the journal's id, or the new one given: never another
            raise RuntimeError(f"cache dir {config.cache_dir}: mount id {prepared_id}, announced {mount_id}")
        kernel = KernelCaches()
        settings = Settings(durability=config.durability, upload_round_bytes=config.upload_round_bytes or 0,
                            staging_budget=cache.staging_budget, refresh_interval=config.refresh_interval,
                            snapshot_segments=config.snapshot_segments, gc_every_s=config.gc_every_s)
        mount = assemble(lake, cache.journal, cache.staging, cache.chunks, mount_id=mount_id, settings=settings,
                         forget=kernel.forget,
                         start_reading={"start_snapshot": view.snapshot_key, "start_segments_read": view.segments_read,
                                        "start_read_s": round(time.monotonic() - started, 3),
                                        # where the lake is, for the commands that read it directly
                                        # (retention, gc, tag, log, du: ckptfs/lifecycle_cli.py)
                                        "store_url": config.store_url, "endpoint_url": config.endpoint_url})
        # Following starts where the reading stopped. A new cache dir was built from the same
        # replay; an existing one is compared with it by the catch-up's reconciliation.
        mount.files.remote.start_from(view.base, view.events, view.cursors, view.horizon_ns, replayed=rebuilt,
                                      base_covers=view.base_covers)
        mount.follower.start_from(view.cursors, listed_at_ns)
        registered.result()
        ops = Operations(mount)
        state = {"closed": False, "new_cache": rebuilt is not None, "listed_at_ns": listed_at_ns}
        # nosuid, nodev: set-id bits and device nodes come from a lake other clients write to; they
        # are kept (and shown) but grant nothing on this node.
        options = set(pyfuse3.default_options) | {"fsname=ckptfs", "subtype=ckptfs", "nosuid", "nodev"}
        if config.allow_other:
            options |= {"allow_other", "default_permissions"}
        pyfuse3.init(ops, config.mountpoint, options)
        try:
            trio.run(_main, config, mount, kernel, on_ready, state)
        finally:
            if not state["closed"]:
                pyfuse3.close(unmount=True)
    finally:
        cache.close()


async def _main(config: MountConfig, mount: Mount, kernel: KernelCaches, on_ready: Callable[[], None],
                state: dict[str, Any]) -> None:
    files = mount.files
    sealed = files.lifecycle.seal_unheld_versions()
    if sealed:
        log.info("sealed %d versions left open by a previous daemon", sealed)
    async with trio.open_nursery() as nursery:
        await nursery.start(mount.run_engine)
        # What others published since the lake was read (the feed).
        caught_up = await mount.following.refresh()
        if caught_up["events"]:
            log.info("caught up with the lake: %d events from %d segments", caught_up["events"],
                     caught_up["segments"])
        kernel.ready = True
        if state["new_cache"]:
            nursery.start_soon(learn_known_chunks, mount.lake, mount.journal)
        await nursery.start(mount.following.run)
        # The reading at start counts as a sweep: folded, and maybe a snapshot, once serving.
        await mount.following.fold(state["listed_at_ns"])
        nursery.start_soon(_commit_periodically, files)
        if config.metrics_address:
            from ckptfs.metrics import start_metrics, update_metrics

            nursery.start_soon(update_metrics, start_metrics(config.metrics_address, mount.status), mount.status)
        nursery.start_soon(_terminate_on_signal, state)
        nursery.start_soon(set_read_ahead, config.mountpoint, READ_AHEAD_KB)
        log.info("mounted %s on %s (cache %s)", config.store_url, config.mountpoint, config.cache_dir)
        on_ready()
        systemd.notify(f"READY=1\nSTATUS=mounted {config.store_url} on {config.mountpoint}")
        await pyfuse3.main()
        # Release the mount point before draining, so `umount` returns and nothing blocks on us.
        pyfuse3.close(unmount=True)
        state["closed"] = True
        log.info("unmounted %s", config.mountpoint)
        files.lifecycle.seal_unheld_versions()  # the kernel released every handle: nothing more is written
        files.commit(durable=True)
        if config.drain and not files.control.no_drain:
            # Stopped by a signal (a preempted node: SIGKILL follows), drain for a bounded time and
            # keep the rest for the next mount on this cache dir; unmounted by hand, drain it all.
            with trio.move_on_after(config.drain_timeout if state.get("signalled") else math.inf):
                await drain(mount.uploader, mount.journal)
            if mount.journal.outbox_length():
                log_not_in_lake(mount.journal, config.cache_dir, config.drain_timeout)
                # Uploads still retrying hold worker threads trio would wait for (for minutes): go
                # now, as a SIGKILL would, which the cache dir is made to survive (docs/DESIGN.md).
                files.commit(durable=True)
                logging.shutdown()
                os._exit(0)
        else:
            log.info("not draining: %d events stay queued for the next mount on %s",
                     mount.journal.outbox_length(), config.cache_dir)
        nursery.cancel_scope.cancel()


async def _commit_periodically(files: FileSystem) -> None:
    while True:
        await trio.sleep(1)
        if files.lifecycle.seal_unheld_versions():
            log.warning("versions were open with no handle left: sealed (a close this mount missed)")
        files.commit()


async def _terminate_on_signal(state: dict[str, Any]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            systemd.notify("STOPPING=1")
            state["signalled"] = True
            pyfuse3.terminate()
            return


def log_not_in_lake(journal: Journal, cache_dir: str, timeout: float) -> None:
    """Name every file whose latest change is not in the lake yet (what a lost node would lose)."""
    paths = sorted(set(journal.outbox_paths()))
    log.warning("after %.0f s of draining, %d changes are not in the lake; the next mount on %s uploads "
                "them: %s", timeout, journal.outbox_length(), cache_dir, ", ".join(paths[:50])
                + (f" and {len(paths) - 50} more" if len(paths) > 50 else ""))
