#!/usr/bin/env python3
"""`ckptfs cp` (a checkpoint out of the lake without FUSE) against boto3's `download_file`.

    python scripts/bench_cp.py [--size-mib 512] [--repeat 3]

On the S3 model (tests/s3model.py: moto behind a proxy with S3's first-byte latency and
per-connection bandwidth): a file of random bytes is saved through a mount and, as a plain object,
with boto3's `upload_file`. Then, interleaved, `ckptfs cp` of the file and a boto3 `download_file`
of the object, each a process of its own (so both pay their start-up), the page cache dropped
before each. Prints seconds (min/median/max) and the ratio of the medians, in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

DOWNLOAD = ("import boto3, sys; "
            "boto3.client('s3', endpoint_url=sys.argv[1]).download_file(sys.argv[2], sys.argv[3], sys.argv[4])")


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as caches:
        caches.write("3\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import boto3

    from tests.helpers import Mount
    from tests.s3model import S3Model

    model = S3Model()  # which sets moto's credentials, as boto3 below needs
    root = tempfile.mkdtemp(prefix="ckptfs-cp-bench-")
    mount = None
    try:
        bucket = model.bucket()
        url = f"s3://{bucket}/lake"
        data_path = os.path.join(root, "data.bin")
        with open(data_path, "wb") as file:
            for _ in range(args.size_mib):
                file.write(os.urandom(1 << 20))
        mount = Mount(url, os.path.join(root, "mnt"), os.path.join(root, "cache"), os.path.join(root, "daemon.log"),
                      extra=["--endpoint-url", model.endpoint]).start()
        shutil.copyfile(data_path, mount.path("model.bin"))
        mount.sync()
        mount.unmount()
        mount = None
        boto3.client("s3", endpoint_url=model.direct).upload_file(data_path, bucket, "plain/model.bin")
        figures: dict[str, list[float]] = {"ckptfs cp": [], "boto3 download_file": []}
        for _ in range(args.repeat):
            for name, command in (
                    ("ckptfs cp", [sys.executable, "-m", "ckptfs", "cp", f"{url}/model.bin",
                                   os.path.join(root, "out.bin"), "--endpoint-url", model.endpoint]),
                    ("boto3 download_file", [sys.executable, "-c", DOWNLOAD, model.endpoint, bucket,
                                             "plain/model.bin", os.path.join(root, "out.bin")])):
                drop_caches()
                started = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                figures[name].append(time.perf_counter() - started)
                with open(os.path.join(root, "out.bin"), "rb") as copied, open(data_path, "rb") as original:
                    assert copied.read() == original.read(), f"{name} copied other bytes"
                os.unlink(os.path.join(root, "out.bin"))
        print(f"{args.size_mib} MiB on the S3 model, {args.repeat} interleaved runs each, seconds (min/median/max)")
        for name, values in figures.items():
            print(f"| {name} | {min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f} |")
        ratio = statistics.median(figures["boto3 download_file"]) / statistics.median(figures["ckptfs cp"])
        print(json.dumps({"ckptfs_cp_speed_vs_boto3": round(ratio, 2)}))
    finally:
        if mount is not None:
            mount.unmount()
        model.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
