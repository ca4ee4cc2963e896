#!/usr/bin/env python3
"""A lake before and after a retention policy and GC, as a user would see it.

    python scripts/demo_lifecycle.py [--steps 14] [--size-mib 32]

Mounts an embedded lake in a temporary directory (`gc_grace_s` 5, so two GC runs fit in a demo),
runs a training loop that saves as Hugging Face's Trainer with `save_total_limit=2` does
(`run/checkpoint-N/` with the model, the optimizer state and trainer_state.json, the oldest removed
after each save), plus an atomic `last.pt` (write to a temp file, rename) every step. Then it shows
`ls -la .versions/run`, `ckptfs du`, sets `--keep-last 1 --keep-daily 7`, runs `ckptfs gc` twice a
grace apart and prints versions, bytes stored, bytes freed and dollars a month before and after.
Unmounts and removes everything at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRACE = 5


def ckptfs(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "ckptfs", *args], capture_output=True, text=True, cwd=REPO)
    if result.returncode:
        raise SystemExit(f"ckptfs {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--size-mib", type=int, default=32)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="ckptfs-lifecycle-")
    mountpoint, lake = os.path.join(root, "ckpt"), os.path.join(root, "lake")
    os.makedirs(mountpoint)
    url = f"file://{lake}"
    try:
        ckptfs("mount", url, mountpoint, "--cache-dir", os.path.join(root, "cache"),
               "--lake-setting", f"gc_grace_s={GRACE}", "--lake-setting", "max_clock_skew_s=0")
        run = os.path.join(mountpoint, "run")
        os.makedirs(run)
        torch.manual_seed(0)
        model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(args.size_mib // 4)])
        optimizer = torch.optim.Adam(model.parameters())
        for step in range(1, args.steps + 1):
            loss = model(torch.randn(8, 1024)).pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            temp = os.path.join(mountpoint, f"last.pt.tmp.{os.getpid()}")
            torch.save({"step": step, "model": model.state_dict()}, temp)
            os.replace(temp, os.path.join(mountpoint, "last.pt"))
            if step % 2 == 0:  # save_steps=2, save_total_limit=2
                directory = os.path.join(run, f"checkpoint-{step}")
                os.makedirs(directory)
                torch.save(model.state_dict(), os.path.join(directory, "model.pt"))
                torch.save(optimizer.state_dict(), os.path.join(directory, "optimizer.pt"))
                with open(os.path.join(directory, "trainer_state.json"), "w") as file:
                    json.dump({"global_step": step}, file)
                kept = sorted((name for name in os.listdir(run)), key=lambda name: int(name.split("-")[1]))
                for name in kept[:-2]:
                    shutil.rmtree(os.path.join(run, name))
            time.sleep(0.2)
        ckptfs("sync", mountpoint)
        print("$ ls -la .versions/run        # rotated checkpoints: sticky bit (t), mtime = when deleted")
        print(subprocess.run(["ls", "-la", os.path.join(mountpoint, ".versions", "run")], capture_output=True,
                             text=True).stdout)
        print("$ ckptfs du run")
        print(ckptfs("du", run))
        before = json.loads(ckptfs("du", mountpoint, "--json"))["total"]
        print(ckptfs("retention", "set", mountpoint, "--keep-last", "1", "--keep-daily", "7"))
        time.sleep(GRACE + 1)
        first = json.loads(ckptfs("gc", url, "--json"))
        time.sleep(GRACE + 1)
        second = json.loads(ckptfs("gc", url, "--json"))
        ckptfs("refresh", mountpoint)
        after = json.loads(ckptfs("du", mountpoint, "--json"))["total"]
        print("$ ckptfs gc (second run) --json | versions")
        print(json.dumps(second["versions"], indent=2))
        print(f"| | versions | stored bytes | $ a month |\n|---|---|---|---|\n"
              f"| before | {before['versions']} | {before['stored_bytes']:,} | {before['dollars_per_month']:.6f} |\n"
              f"| after | {after['versions']} | {after['stored_bytes']:,} | {after['dollars_per_month']:.6f} |")
        print(f"first run marked {first['marked']['objects']} objects ({first['marked']['bytes']:,} bytes); second "
              f"deleted {second['deleted']['objects']} ({second['deleted']['bytes']:,} bytes) and repacked "
              f"{second['repacked']['packs']} packs; lake objects {second['stored_bytes']['before']:,} -> "
              f"{second['stored_bytes']['after']:,} bytes")
        print(ckptfs("fsck", url, "--verify-data"))
    finally:
        subprocess.run([sys.executable, "-m", "ckptfs", "unmount", mountpoint], capture_output=True, cwd=REPO)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
