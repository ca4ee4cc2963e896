#!/usr/bin/env python3
"""Run many randomized crash trials against real mounts and report what was lost (must be 0).

    python scripts/crash_trials.py --trials 300 [--store s3] [--seed N] [--max-kill-delay 3]
    python scripts/crash_trials.py --trials 1000 --power-cut --writers 3 --memmap     # power cuts
    python scripts/crash_trials.py --trials 1000 --power-cut --minutes 150 ...          # end checks in time
    python scripts/crash_trials.py --trials 200 --mounts 2 --writers 2 --memmap --gc  # a node of training

Each trial: mount on the same cache dirs, start writers shaped like training (tests/crashtrial.py),
then kill every process of the node at a random moment, or with --power-cut freeze them and make
the cache disk forget every write no fsync made durable (tests/powercut.py), and restart. After each
restart what was fsynced must read back whole; at the end every recorded file must be committed and
`ckptfs fsck --verify-data` must find no problem.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.crashtrial import Shape, run_trials  # noqa: E402
from tests.helpers import MotoServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--store", choices=["local", "s3"], default="local")
    parser.add_argument("--max-kill-delay", type=float, default=2.5)
    parser.add_argument("--writers", type=int, default=1, help="writer processes per mount")
    parser.add_argument("--mounts", type=int, default=1, help="mounts of the one lake, each with its cache dir")
    parser.add_argument("--memmap", action="store_true", help="a writable numpy.memmap updated on each mount")
    parser.add_argument("--gc", action="store_true", help="`ckptfs gc` (keep-last 1, grace 2 s) throughout")
    parser.add_argument("--power-cut", action="store_true",
                        help="the first mount's cache disk loses what no fsync made durable at each kill")
    parser.add_argument("--cache-size", default="2G",
                        help="each mount's --cache-size: bounded, as on a node, so that staging files are "
                             "evicted and a trial's start does not grow with every trial before it")
    parser.add_argument("--minutes", type=float, default=None,
                        help="start no trial after this many minutes; the end checks run after the last")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop by pid: the mounts and the layer are cleaned up
    shape = Shape(writers=args.writers, mounts=args.mounts, memmap=args.memmap, gc=args.gc, power_cut=args.power_cut)
    server = None

    def progress(result) -> None:
        if result.trials % 50 == 0:
            print(f"  {result.trials} trials in {time.monotonic() - started:.0f} s, {len(result.lost_files)} lost, "
                  f"{len(result.torn_versions)} torn, {len(result.start_failures)} failed starts", flush=True)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ckptfs-crash-") as workdir:
        store_url, extra = None, []
        if args.store == "s3":
            import boto3

            for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                                "AWS_DEFAULT_REGION": "us-east-1"}.items():
                os.environ.setdefault(name, value)
            server = MotoServer()
            bucket = f"crash-{uuid.uuid4().hex[:8]}"
            boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=bucket)
            store_url, extra = f"s3://{bucket}/lake", ["--endpoint-url", server.endpoint]
        extra += ["--cache-size", args.cache_size]
        try:
            result = run_trials(workdir, args.trials, seed=args.seed, store_url=store_url, extra=extra,
                                max_kill_delay=args.max_kill_delay, shape=shape, progress=progress,
                                deadline=started + args.minutes * 60 if args.minutes else None)
        finally:
            if server is not None:
                server.stop()
        print(f"seed {args.seed}, store {args.store}, {shape}: {result.trials} trials in "
              f"{time.monotonic() - started:.0f}s, {result.durable_records} writes recorded durable, "
              f"{result.recorded_files} files checked, {result.undone_writes} writes undone by power cuts; "
              f"{len(result.lost_files)} lost, {len(result.torn_versions)} torn versions, "
              f"{len(result.start_failures)} failed starts, {len(result.lake_problems)} lake problems")
        problems = result.lost_files + result.torn_versions + result.start_failures + result.lake_problems
        for line in problems[:40]:
            print("  " + line)
    return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
