#!/usr/bin/env python3
"""How soon one mount sees what another publishes, and what following costs in requests.

Two real mounts on one lake (an embedded lake by default; `--store-url s3://... --endpoint-url`
for an S3 endpoint), each with its own cache dir. For each of `--files` files: write it on mount A,
`ckptfs sync` it, and time from the sync returning until mount B shows it (polled every 10 ms).
Then both mounts sit idle for `--idle` seconds and the LIST/GET requests their followers made are
counted, per minute and priced at S3 Standard request prices (LIST $0.005 and GET $0.0004 per
1,000, AWS's published us-east-1 prices).

Latency is bounded by --refresh (the poll interval) plus one refresh; it does not depend on the
store's speed as long as a refresh takes less than the interval. Request counts are the store-
independent figure: an idle refresh is one LIST of mounts/ plus one LIST per mount.

    python scripts/bench_following.py --files 20 --refresh 1 --idle 60
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.helpers import Mount  # noqa: E402

LIST_PRICE, GET_PRICE = 0.005 / 1000, 0.0004 / 1000


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store-url", help="default: an embedded lake in a temporary directory")
    parser.add_argument("--endpoint-url")
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--refresh", type=float, default=5.0, help="the mounts' --refresh (seconds)")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idling to count requests over")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="ckptfs-follow-")
    store = args.store_url or f"file://{work}/lake"
    extra = ["--refresh", str(args.refresh)] + (["--endpoint-url", args.endpoint_url] if args.endpoint_url else [])
    mounts = [Mount(store, os.path.join(work, name), os.path.join(work, f"cache-{name}"),
                    os.path.join(work, f"{name}.log"), extra=extra) for name in ("a", "b")]
    try:
        for mount in mounts:
            mount.start()
        writer, reader = mounts
        delays = []
        phases = random.Random(0)
        for index in range(args.files):
            # A save lands at any point of the reader's refresh period, not just after a refresh.
            time.sleep(phases.uniform(0, args.refresh))
            name = f"file-{index}"
            with open(writer.path(name), "wb") as file:
                file.write(os.urandom(4096))
            writer.sync()
            published = time.monotonic()
            while not os.path.exists(reader.path(name)):
                time.sleep(0.01)
            delays.append(time.monotonic() - published)
        before = [mount.status() for mount in mounts]
        time.sleep(args.idle)
        after = [mount.status() for mount in mounts]
        minutes = args.idle / 60
        pairs = list(zip(after, before, strict=True))
        lists = [(a["refresh_list_requests"] - b["refresh_list_requests"]) / minutes for a, b in pairs]
        gets = [(a["refresh_get_requests"] - b["refresh_get_requests"]) / minutes for a, b in pairs]
        result = {
            "store": "embedded" if not args.store_url else args.store_url,
            "refresh_s": args.refresh,
            "visible_after_sync_s": {"p50": round(statistics.median(delays), 3),
                                     "p99": round(percentile(delays, 0.99), 3),
                                     "max": round(max(delays), 3), "files": len(delays)},
            "idle_requests_per_minute_per_mount": {"list": round(statistics.mean(lists), 1),
                                                   "get": round(statistics.mean(gets), 1)},
            "idle_cost_per_mount_per_day_usd": round(
                (statistics.mean(lists) * LIST_PRICE + statistics.mean(gets) * GET_PRICE) * 60 * 24, 4),
            "mounts_on_the_lake": 2,
        }
        print(json.dumps(result, indent=2))
        return 0
    finally:
        for mount in mounts:
            mount.unmount()
        subprocess.run(["rm", "-rf", work], check=False)


if __name__ == "__main__":
    sys.exit(main())
