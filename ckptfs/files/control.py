"""The control interface's figures: per-file state (the `user.ckptfs.state` xattr), the file system's
part of the mount's status (`ckptfs status`, metrics; ckptfs/mount.py adds how it follows the lake)
and the barrier `ckptfs sync` waits for. Reads only."""

from __future__ import annotations

import os
import time
from typing import Any

import trio

from ckptfs.cache.journal import COMMITTED, OPEN, SEALED, STATE_NAMES, Inode, Journal
from ckptfs.cache.staging import Staging
from ckptfs.engine.interface import Engine
from ckptfs.errors import CkptfsError
from ckptfs.lake.lake import writer_identity
from ckptfs.lake.manifest import encode_path

# The longest `progress_after` holds a request: what a waiting `ckptfs sync` updates its bar at.
PROGRESS_WAIT = 0.5
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)


class Latencies:
    """How long the kernel's write, flush (close) and fsync requests took to answer: the save stall a
    trainer sees, backpressure waits included. Cumulative bucket counts, as Prometheus histograms."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def observe(self, name: str, seconds: float) -> None:
        counts = self.counts.setdefault(name, [0] * (len(LATENCY_BUCKETS) + 1))
        for index, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                counts[index] += 1
        counts[-1] += 1  # +Inf: every observation
        self.sums[name] = self.sums.get(name, 0.0) + seconds

    def to_dict(self) -> dict[str, Any]:
        return {name: {"buckets": list(LATENCY_BUCKETS), "counts": list(counts), "sum": round(self.sums[name], 6)}
                for name, counts in self.counts.items()}


class Control:
    def __init__(self, journal: Journal, staging: Staging, engine: Engine, mount_id: str) -> None:
        self.writer = writer_identity()
        self.latencies = Latencies()
        self.journal = journal
        self.staging = staging
        self.engine = engine
        self.mount_id = mount_id
        self.no_drain = False  # set through the control interface: unmount leaves uploads queued
        self.prefetching: dict[str, int] | None = None  # a `ckptfs prefetch` under way
        self.last_prefetch: dict[str, Any] = {}  # what the last one did

    def state_of(self, inode: Inode) -> str:
        if not inode.is_file or inode.version is None:
            return "committed pending_bytes=0" if not inode.is_file else "dirty pending_bytes=0"
        version = self.journal.version(inode.version)
        if version is None:
            return "unknown"
        if version.state == COMMITTED:
            published = self.journal.outbox_seq_of_version(version.id) is None
            return "committed pending_bytes=0" if published else "uploading pending_bytes=0"
        if version.state == SEALED:
            return f"uploading pending_bytes={self.engine.pending_of(version)}"
        return f"{STATE_NAMES[OPEN]} pending_bytes={inode.size}"

    def progress(self) -> dict[str, Any]:
        """What `ckptfs sync` polls while it waits: how far publication has come and what is left.
        A few fields, so that one getxattr answers it (the caller's first buffer is 128 bytes; the
        status is kilobytes, computed twice per read) and cheap enough to ask ten times a second:
        benchmarks polling the status at 100 Hz spent 9% of a save's GIL time answering them."""
        sealed_count, _, _ = self.journal.versions_summary(SEALED)
        answer = {"outbox_head": self.engine.outbox_head(), "uploading_bytes": self.engine.pending_bytes(),
                  "uploading_files": sealed_count, "events_pending": self.journal.outbox_length()}
        error = self.engine.store_health()["last_store_error"] or self.engine.last_error
        return {**answer, "error": error} if error else answer

    async def progress_after(self, upto: int, wait: float = PROGRESS_WAIT) -> dict[str, Any]:
        """progress(), answered once every outbox event up to `upto` is published, or after `wait`
        seconds, or at once while an error stands (the caller then paces itself): what `ckptfs sync`
        asks, so that it learns of publication when it happens, from a request or two a second. A
        benchmark polling progress at 100 Hz cost the daemon ~0.15 s of GIL per GiB saved."""
        answer = self.progress()
        if "error" in answer or answer["outbox_head"] > upto:
            return answer
        with trio.move_on_after(wait):
            await self.engine.wait_published(upto)
        return self.progress()

    def barrier(self, top: Inode) -> dict[str, Any]:
        """What `ckptfs sync PATH` waits for: every event queued so far, and which files are still open."""
        still_open = []
        paths = [(b"", top.ino)] if not top.is_dir else list(self.journal.walk_files(top.ino))
        for path, file_ino in paths:
            inode = self.journal.inode(file_ino)
            if inode and inode.version is not None:
                version = self.journal.version(inode.version)
                if version and version.state == OPEN:
                    still_open.append(encode_path(path))
        upto = self.journal.outbox_tail()
        self.engine.hurry(upto)  # `ckptfs sync` waits for these: no lingering
        return {"upto": upto, "open_files": still_open[:20], "open_count": len(still_open)}

    async def prefetch(self, top: Inode) -> dict[str, Any]:
        """Bring the committed content of every file under `top` into the chunk cache (files with
        local data need nothing). Progress is in `status` while it runs."""
        paths = [(b"", top.ino)] if not top.is_dir else list(self.journal.walk_files(top.ino))
        manifests = []
        for _, file_ino in paths:
            inode = self.journal.inode(file_ino)
            version = self.journal.version(inode.version) if inode and inode.version is not None else None
            if version is not None and version.manifest is not None and not version.staged:
                manifests.append(version.manifest)
        self.prefetching = {"files": len(manifests), "total_bytes": 0, "done_bytes": 0}
        started = time.monotonic()
        try:
            await self.engine.prefetch(manifests, self.prefetching)
        except CkptfsError as error:  # too large for the cache, a damaged or missing object, a store error
            return {**self.prefetching, "error": str(error)}
        finally:
            done, self.prefetching = self.prefetching, None
        return {**done, "seconds": round(time.monotonic() - started, 3)}

    def status(self) -> dict[str, Any]:
        counters = self.journal.counters()
        sealed_count, _, oldest = self.journal.versions_summary(SEALED)
        open_versions = self.journal.versions_in_state(OPEN)
        logical = counters.get("logical_bytes", 0)
        new_bytes, stored = counters.get("new_chunk_bytes", 0), counters.get("stored_bytes", 0)
        return {
            "pid": os.getpid(),
            "writer": self.writer,  # host, user and job, as the lake records them (lake.writer_identity)
            "mount_id": self.mount_id,
            "dirty_files": len(open_versions),
            "dirty_bytes": sum(self.staging.sizes.get(v.id, 0) for v in open_versions),
            "dirty_uploaded_bytes": sum(self.engine.early_bytes(v.id) for v in open_versions),
            "upload_while_writing_bytes": self.engine.round_bytes,
            "staged_bytes": self.staging.total_bytes,
            "spilled_bytes": sum(self.staging.holes.values()),
            "spilled_bytes_total": self.staging.punched_bytes,  # since the daemon started
            "peak_staged_bytes": self.staging.peak_bytes,
            "staging_limit_bytes": self.engine.limit_bytes,
            "backpressure_waits": self.engine.backpressure_waits,
            "backpressure_seconds": round(self.engine.backpressure_seconds, 2),
            "uploading_files": sealed_count,
            "uploading_bytes": self.engine.pending_bytes(),
            "oldest_pending_age_s": round((time.time_ns() - oldest) / 1e9, 1) if oldest else 0,
            # What a loss of this node now would lose (dirty and sealed bytes), and since when.
            "at_risk_bytes": sum(self.staging.sizes.get(v.id, 0) for v in open_versions) + self.engine.pending_bytes(),
            "at_risk_oldest_s": round((time.time_ns() - first) / 1e9, 1)
            if (first := self.journal.oldest_unpublished_ns()) else 0,
            "events_pending": self.journal.outbox_length(),
            "outbox_head": self.engine.outbox_head(),
            "committed_versions": counters.get("versions_committed", 0),
            "events_published": counters.get("events_published", 0),
            "segments_published": counters.get("segments_published", 0),
            "committed_bytes": logical,
            "new_chunk_bytes": new_bytes,
            "stored_bytes": stored,
            "packs_written": counters.get("packs", 0),
            "dedup_ratio": round(logical / new_bytes, 2) if new_bytes else None,
            "compression_ratio": round(new_bytes / stored, 2) if stored else None,
            "last_error": self.engine.last_error,
            "latency_seconds": self.latencies.to_dict(),
            # Reads of content in the lake: bytes asked for, bytes that had to come from the lake
            # (S3 egress), and the share the chunk cache and memory served.
            "remote_read_bytes": self.engine.remote_read_bytes,
            "fetched_bytes": self.engine.fetched_bytes,
            "cache_hit_ratio": round(1 - min(1.0, self.engine.fetched_bytes / self.engine.remote_read_bytes), 4)
            if self.engine.remote_read_bytes else None,
            **self.engine.store_health(),
            "no_drain": self.no_drain,
            "prefetching": self.prefetching,
        }
