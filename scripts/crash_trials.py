#!/usr/bin/env python3
"""Run many randomized SIGKILL crash trials against a real mount and report lost files (must be 0).

    python scripts/crash_trials.py --trials 300 [--store s3] [--seed N] [--max-kill-delay 3]

Each trial: mount on a shared cache dir, start a writer that records a file only after fsync (and
rename) returned, SIGKILL the daemon after a random delay, remount. At the end every recorded file
must read back identical and committed, and `ckptfs fsck --verify-data` must find no problem.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.crashtrial import run_trials  # noqa: E402
from tests.helpers import MotoServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--store", choices=["local", "s3"], default="local")
    parser.add_argument("--max-kill-delay", type=float, default=2.5)
    args = parser.parse_args()
    server = None
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
        started = time.monotonic()
        try:
            result = run_trials(workdir, args.trials, seed=args.seed, store_url=store_url, extra=extra,
                                max_kill_delay=args.max_kill_delay)
        finally:
            if server is not None:
                server.stop()
        print(f"seed {args.seed}, store {args.store}: {result.trials} trials in {time.monotonic() - started:.0f}s, "
              f"{result.recorded_files} files recorded after fsync, {len(result.lost_files)} lost, "
              f"{len(result.lake_problems)} lake problems")
        for line in result.lost_files[:20] + result.lake_problems[:20]:
            print("  " + line)
    return 0 if not result.lost_files and not result.lake_problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
