#!/usr/bin/env python3
"""A small training loop that checkpoints like real jobs do, used by scripts/demo.sh.

A model with a large frozen embedding (unchanged between saves, so it deduplicates) and a small
trained head. Every few steps it saves step-N/model.pt and overwrites last.ckpt, each with torch.save.
"""

import os
import sys
import time

import torch


def main(root: str, steps: int = 50, every: int = 10) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(64_000, 256), torch.nn.Flatten(),
                                torch.nn.Linear(256 * 8, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    model[0].weight.requires_grad_(False)  # frozen: identical in every checkpoint
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    run = os.path.join(root, "run1")
    os.makedirs(run, exist_ok=True)
    for step in range(1, steps + 1):
        tokens = torch.randint(0, 64_000, (32, 8))
        loss = torch.nn.functional.cross_entropy(model(tokens), torch.randint(0, 10, (32,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0:
            state = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
            started = time.perf_counter()
            os.makedirs(os.path.join(run, f"step-{step}"), exist_ok=True)
            torch.save(state, os.path.join(run, f"step-{step}", "model.pt"))
            torch.save(state, os.path.join(run, "last.ckpt"))
            print(f"step {step:3d}  loss {loss.item():.3f}  saved 2 checkpoints in "
                  f"{time.perf_counter() - started:.2f}s")


if __name__ == "__main__":
    main(sys.argv[1])
