"""Real frameworks through a real mount: torch.save/load, DCP with several processes, safetensors."""

import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")


def state_dict(megabytes: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    per_tensor = 4 * 1024 * 1024  # 4 MiB of fp32 each
    for index in range(megabytes // 4):
        tensors[f"layer{index}.weight"] = torch.randn(per_tensor // 4, generator=generator)
    return tensors


def test_torch_save_and_load_a_few_hundred_megabytes(mount):
    sd = state_dict(256)
    os.makedirs(mount.path("run1", "step-1000"))
    target = mount.path("run1", "step-1000", "model.pt")
    torch.save(sd, target)
    loaded = torch.load(target, weights_only=True)
    assert loaded.keys() == sd.keys()
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    mount.sync()
    assert os.getxattr(target, "user.ckptfs.state").startswith(b"committed")


def test_last_ckpt_overwritten_three_times_loads_every_version(mount):
    for step in (1, 2, 3):
        torch.save({"step": step, "w": torch.full((1000,), float(step))}, mount.path("last.ckpt"))
    names = sorted(os.listdir(mount.path(".versions", "last.ckpt")))
    assert len(names) == 3
    for step, name in zip((1, 2, 3), names, strict=True):
        loaded = torch.load(mount.path(".versions", "last.ckpt", name), weights_only=True)
        assert loaded["step"] == step and float(loaded["w"][0]) == step
    with pytest.raises(OSError) as error:
        open(mount.path(".versions", "last.ckpt", names[0]), "wb")
    assert error.value.errno == 30  # EROFS


def test_safetensors_save_and_mmap_load(mount):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    sd = state_dict(32, seed=3)
    target = mount.path("model.safetensors")
    safetensors_torch.save_file(sd, target)
    from safetensors import safe_open

    with safe_open(target, framework="pt") as reader:  # safe_open maps the file with mmap
        for key in sd:
            assert torch.equal(reader.get_tensor(key), sd[key])


DCP_WORKER = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
    rank, world, port, directory, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from torch.distributed.tensor import DTensor, Shard, init_device_mesh
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    full = torch.randn(world * 256, 1024)
    sd = {"weight": DTensor.from_local(full.chunk(world)[rank].clone(), mesh, [Shard(0)]),
          "step": torch.tensor(1234)}
    if mode == "save":
        dcp.save(sd, checkpoint_id=directory)
    else:
        target = {"weight": DTensor.from_local(torch.zeros(256, 1024), mesh, [Shard(0)]), "step": torch.tensor(0)}
        dcp.load(target, checkpoint_id=directory)
        assert torch.equal(target["weight"].to_local(), full.chunk(world)[rank]), "shard differs"
        assert int(target["step"]) == 1234
    dist.barrier()
    dist.destroy_process_group()
    print("ok", flush=True)
    # gloo's C++ threads can abort the interpreter's teardown ("terminate called without an active
    # exception") after all the work is done; leave without running C++ static destructors.
    os._exit(0)
""")


def run_dcp(tmp_path, directory: str | list[str], mode: str, world: int = 3) -> None:
    """Run a DCP save or load with `world` processes; `directory` may name one per rank (each rank
    on its own mount, as on a multi-node job)."""
    from tests.helpers import free_port

    script = tmp_path / "dcp_worker.py"
    script.write_text(DCP_WORKER)
    port = str(free_port())
    directories = directory if isinstance(directory, list) else [directory] * world
    processes = [subprocess.Popen([sys.executable, str(script), str(rank), str(world), port, directories[rank], mode],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for rank in range(world)]
    failures = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        if process.returncode != 0 or out.decode().strip() != "ok":
            failures.append(err.decode()[-3000:])
    assert not failures, failures


def test_dcp_save_and_load_with_several_processes(mounter, tmp_path):
    first = mounter(cache="cache1")
    directory = first.path("run1", "step-100")
    run_dcp(tmp_path, directory, "save")
    assert ".metadata" in os.listdir(directory)
    run_dcp(tmp_path, directory, "load")
    first.sync()
    first.unmount()
    first.assert_clean_log()
    # A fresh mount with an empty cache reads the checkpoint from the lake alone.
    second = mounter(cache="cache2", name="mnt2")
    run_dcp(tmp_path, second.path("run1", "step-100"), "load")
    second.assert_clean_log()
