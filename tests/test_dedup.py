"""Dedup measured on bytes stored in the lake, with real torch.save output."""

import io
import os

import pytest

torch = pytest.importorskip("torch")


def stored_pack_bytes(lake_dir: str) -> int:
    total = 0
    for directory, _, files in os.walk(os.path.join(lake_dir, "packs")):
        total += sum(os.path.getsize(os.path.join(directory, f)) for f in files)
    return total


def model(seed: int, count: int = 40) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {f"layer{i}.weight": torch.randn(1024 * 1024, generator=generator) for i in range(count)}  # 4 MiB each


def save(mount, name: str, sd: dict) -> int:
    """Save as training jobs do: step-N/model.pt. torch.save names the zip records after the file's
    basename, so the basename stays the same from step to step, as it does in real runs."""
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    os.makedirs(os.path.dirname(mount.path(name)), exist_ok=True)
    torch.save(sd, mount.path(name))
    mount.sync()
    return len(buffer.getvalue())


def test_identical_resave_adds_almost_nothing(mount, tmp_path):
    sd = {"step": 1000, **model(1)}
    size = save(mount, "step-1000/model.pt", sd)
    before = stored_pack_bytes(str(tmp_path / "lake"))
    save(mount, "step-1000-again/model.pt", sd)
    added = stored_pack_bytes(str(tmp_path / "lake")) - before
    assert added <= 0.01 * size, f"identical re-save stored {added} new bytes of {size}"


def test_ninety_percent_unchanged_adds_at_most_fifteen_percent(mount, tmp_path):
    sd = model(2)
    size = save(mount, "step-1000/model.pt", {"step": 1000, **sd})
    before = stored_pack_bytes(str(tmp_path / "lake"))
    changed = dict(sd)
    fresh = model(3, count=4)
    for index, key in enumerate(list(sd)[::10]):  # every tenth tensor changes: 10% of the bytes
        changed[key] = fresh[f"layer{index}.weight"]
    # The step counter grows a digit, so the pickle header changes length and shifts every offset.
    save(mount, "step-10000/model.pt", {"step": 10000, "note": "x" * 17, **changed})
    added = stored_pack_bytes(str(tmp_path / "lake")) - before
    print(f"90%-unchanged re-save: {added} new bytes for {size} logical ({added / size:.1%})")
    assert added <= 0.15 * size, f"stored {added} new bytes of {size} ({added / size:.1%})"


def test_the_same_state_dict_under_another_name_adds_almost_nothing(mount, tmp_path):
    """Lightning saves one state dict as last.ckpt and as epoch=3-step=1000.ckpt: torch.save puts the
    name in every record header, and chunking profile 3 cuts where each record's data starts."""
    sd = {"step": 1000, **model(4, count=12)}
    size = save(mount, "run/last.ckpt", sd)
    before = stored_pack_bytes(str(tmp_path / "lake"))
    save(mount, "run/epoch=3-step=1000.ckpt", sd)
    added = stored_pack_bytes(str(tmp_path / "lake")) - before
    print(f"same state dict, another name: {added} new bytes for {size} logical ({added / size:.2%})")
    assert added <= 0.01 * size, f"stored {added} new bytes of {size} ({added / size:.1%})"
