#!/usr/bin/env python3
"""How fast a file larger than the cache is written once the cache is full, against boto3.

On one fresh moto_server (or --endpoint-url): boto3 `upload_file` of 1 GiB, then one file of
`--gib` GiB written in 1 MiB blocks through a mount with `--cache-size`. Once the staging share is
full the writer goes at the rate the spilled prefix reaches the lake (ckptfs/engine/spill.py). Every
64 KiB of the data is stamped with its offset, so no chunk dedups. Prints the write rate after the
first GiB and its ratio to boto3's.

    python scripts/measure_spill.py --gib 3 --cache-size 512M
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402 - the benchmark's moto_server, mount and stamping helpers

MIB = 1 << 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=int, default=3)
    parser.add_argument("--cache-size", default="512M")
    parser.add_argument("--endpoint-url", help="an S3 endpoint to use instead of a local moto_server")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("measure_spill: run as root (it mounts)")
        return 2
    run = bench.Bench(argparse.Namespace(endpoint_url=args.endpoint_url, bucket=None, workdir=None))
    try:
        block = bytearray(os.urandom(MIB))
        source = os.path.join(run.workdir, "direct.bin")
        with open(source, "wb") as file:
            for number in range(1024):
                bench.stamp(block, number + (1 << 20))  # not the bytes the mount writes below
                file.write(block)
        os.sync()
        started = time.perf_counter()
        run.s3.upload_file(source, run.bucket, "direct.bin")
        boto3_rate = 1024 * MIB / (time.perf_counter() - started) / 1e6
        print(f"boto3 upload_file, 1 GiB: {boto3_rate:.0f} MB/s")

        system = bench.Ckptfs(run)
        system.start(cache="cache", extra=["--cache-size", args.cache_size])
        try:
            fd = os.open(system.path("big.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            marks: dict[int, float] = {}
            started = time.perf_counter()
            for number in range(args.gib * 1024):
                bench.stamp(block, number)
                os.write(fd, block)
                if number % 512 == 511:
                    marks[number + 1] = time.perf_counter() - started
            os.close(fd)
            status = system.status()
            print("seconds at each 512 MiB written:", ", ".join(f"{value:.1f}" for value in marks.values()))
            print(f"peak staged bytes: {status['peak_staged_bytes'] / MIB:.0f} MiB "
                  f"(limit {status['staging_limit_bytes'] / MIB:.0f} MiB)")
            written = sorted(marks)
            rate = (written[-1] - 1024) * MIB / (marks[written[-1]] - marks[1024]) / 1e6
            print(f"write rate after the first GiB: {rate:.0f} MB/s ({rate / boto3_rate:.2f}x boto3)")
            started = time.perf_counter()
        finally:
            system.stop()
            system.cleanup()
        print(f"drain at unmount: {time.perf_counter() - started:.1f} s")
    finally:
        run.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
