"""The chunk path alone: what uploading a sealed file costs the event loop and the process, per GiB.

    python scripts/profile_chunk_path.py [--size-mib 512] [--repeat 2]

A torch.save file of fp32 tensors (4 MiB each) is staged and uploaded through the uploader's cut and
chunk path (engine/uploader.py `_cut_and_upload`, engine/chunks.py) to an in-memory lake whose pack
PUTs are dropped (no S3 client, no FUSE: only the cutting, hashing, dedup, packing and trio's
steering), first as a new file, then again as an identical one (every chunk deduplicated). For each:
the event loop thread's CPU seconds per GiB (the GIL it holds, at least), the process's, the wall
time, and trio's task steps per GiB, with the tasks that took most (a trio Instrument). Figures, not
assertions; run under `py-spy record --gil` for where the GIL goes.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import sys
import tempfile
import time

import torch
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ckptfs.cache.journal import Journal  # noqa: E402
from ckptfs.cache.staging import Staging  # noqa: E402
from ckptfs.engine.uploader import Uploader  # noqa: E402
from ckptfs.lake import Lake  # noqa: E402
from ckptfs.store.memory import MemoryStore  # noqa: E402

MIB, GIB = 1 << 20, 1 << 30


class PacksDropped(MemoryStore):
    """A lake that keeps everything but the packs' bytes (their PUT is the S3 client's cost, not the path's)."""

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        if not key.startswith("packs/"):
            super().put(key, data, if_absent=if_absent)


class Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.by_task: collections.Counter[str] = collections.Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.by_task[task.name.rsplit(".", 1)[-1]] += 1


def once(data: bytes, workdir: str) -> list[tuple[str, float, float, float, Steps]]:
    lake = Lake(PacksDropped())
    lake.open(create=True)
    staging = Staging(os.path.join(workdir, "staging"))
    uploader = Uploader(Journal(os.path.join(workdir, "journal.sqlite")), staging, lake, "p" * 16)
    figures = []
    for version, name in ((1, "new file"), (2, "identical file")):
        staging.create(version)
        staging.write(version, data, 0)
        steps = Steps()

        async def upload(version: int = version) -> tuple[float, float, float]:
            loop, cpu, wall = time.thread_time(), time.process_time(), time.perf_counter()
            await uploader._cut_and_upload(version, staging.fd(version), len(data), 0)
            return time.thread_time() - loop, time.process_time() - cpu, time.perf_counter() - wall

        loop, cpu, wall = trio.run(upload, instruments=[steps])
        figures.append((name, loop, cpu, wall, steps))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save({f"layer{i}.weight": torch.randn(MIB) for i in range(max(1, args.size_mib // 4))}, buffer)
    data = buffer.getvalue()
    gib = len(data) / GIB
    print(f"{len(data) / MIB:.0f} MiB of torch.save output; per GiB:")
    print(f"{'':16}{'loop CPU s':>11}{'CPU s':>8}{'wall s':>8}{'steps':>8}  tasks that took most steps")
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as workdir:
            for name, loop, cpu, wall, steps in once(data, workdir):
                busiest = ", ".join(f"{task} {count / gib:.0f}" for task, count in steps.by_task.most_common(3))
                print(f"{name:16}{loop / gib:11.3f}{cpu / gib:8.2f}{wall / gib:8.2f}"
                      f"{sum(steps.by_task.values()) / gib:8.0f}  {busiest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
