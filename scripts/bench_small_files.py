#!/usr/bin/env python3
"""Many small files through one mount: does closing, following and `sync` stay flat as they add up?

A checkpoint of a 64-rank job is thousands of files. This writes `--files` small files (4 KiB, one
directory per 1,000) through a real mount on the S3 model (tests/s3model.py: moto_server behind a
proxy adding S3's first-byte latency and per-connection bandwidth; `--endpoint-url` for a real
endpoint), with `--followers` other mounts of the lake following it, and prints:

* closes per second over each tenth of the run, and the last tenth against the second (the target:
  within 20%; it fell from 151/s to 69/s when each refresh re-compared the mount's own changes);
* the writer's and each follower's slowest refresh against the refresh interval;
* how long `ckptfs sync` after the last close took, and how long after the uploads finished
  (the writer's `uploading_files` reaching 0) it returned.

    python scripts/bench_small_files.py --files 10000 --followers 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.helpers import Mount  # noqa: E402
from tests.s3model import S3Model  # noqa: E402


def watch_refreshes(mount: Mount, stop: threading.Event, found: dict) -> None:
    """The slowest refresh the mount reports while the run goes on (status every 0.5 s)."""
    while not stop.is_set():
        status = mount.status()
        if status.get("last_refresh_s") is not None:
            found["slowest_refresh_s"] = max(found.get("slowest_refresh_s", 0), status["last_refresh_s"])
        found["refreshes"] = status.get("refreshes")
        stop.wait(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--followers", type=int, default=1, help="other mounts following the lake")
    parser.add_argument("--refresh", type=float, default=5.0, help="the mounts' --refresh (seconds)")
    parser.add_argument("--endpoint-url", help="a real S3 endpoint instead of the S3 model")
    parser.add_argument("--store-url", help="with --endpoint-url: s3://bucket/prefix")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="ckptfs-small-")
    model = None
    if args.endpoint_url:
        url, endpoint = args.store_url, args.endpoint_url
    else:
        model = S3Model()
        url, endpoint = f"s3://{model.bucket()}/small", model.endpoint
    extra = ["--endpoint-url", endpoint, "--refresh", str(args.refresh)]
    mounts = [Mount(url, os.path.join(work, f"mnt{index}"), os.path.join(work, f"cache{index}"),
                    os.path.join(work, f"mount{index}.log"), extra=extra) for index in range(1 + args.followers)]
    stop = threading.Event()
    watched = [{} for _ in mounts]
    try:
        for mount in mounts:
            mount.start(timeout=120)
        watchers = [threading.Thread(target=watch_refreshes, args=(mount, stop, found), daemon=True)
                    for mount, found in zip(mounts, watched, strict=True)]
        for thread in watchers:
            thread.start()
        writer = mounts[0]
        payload = os.urandom(4096)
        tenth = max(1, args.files // 10)
        rates, started = [], time.monotonic()
        mark = started
        for index in range(args.files):
            directory = writer.path(f"ckpt/d{index // 1000:03d}")
            if index % 1000 == 0:
                os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, f"rank-{index:05d}.distcp"), "wb") as file:
                file.write(payload[:4000] + index.to_bytes(8, "little"))
            if (index + 1) % tenth == 0:
                now = time.monotonic()
                rates.append(tenth / (now - mark))
                mark = now
        written = time.monotonic()
        uploads_done = None

        def wait_uploads() -> None:
            nonlocal uploads_done
            while writer.status()["uploading_files"]:
                time.sleep(0.1)
            uploads_done = time.monotonic()

        waiter = threading.Thread(target=wait_uploads, daemon=True)
        waiter.start()
        writer.cli("sync", writer.mountpoint, timeout=3600)
        synced = time.monotonic()
        waiter.join()
        for mount in mounts[1:]:
            mount.cli("refresh", mount.mountpoint)
        followed = time.monotonic()
        stop.set()
        for thread in watchers:
            thread.join()
        status = writer.status()
        result = {
            "endpoint": "S3 model" if model else endpoint,
            "files": args.files, "followers": args.followers, "refresh_interval_s": args.refresh,
            "closes_per_s_by_tenth": [round(rate) for rate in rates],
            # The first tenth runs before any upload competes for the CPU: the drift is measured from
            # the second tenth (around file 1,000 of 10,000) to the last.
            "closes_per_s_last_over_second_tenth": round(rates[-1] / rates[1], 2),
            "write_s": round(written - started, 1),
            "sync_after_last_close_s": round(synced - written, 1),
            "sync_after_uploads_finished_s": round(synced - (uploads_done or synced), 2),
            "followers_caught_up_after_sync_s": round(followed - synced, 2),
            "slowest_refresh_s": [found.get("slowest_refresh_s") for found in watched],
            "segments_published": status["segments_published"],
            "events_published": status["events_published"],
        }
        if model is not None:
            result["requests"] = model.counts()
        print(json.dumps(result, indent=2))
        return 0
    finally:
        stop.set()
        for mount in mounts:
            mount.unmount()
        if model is not None:
            model.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
