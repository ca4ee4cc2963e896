"""`ckptfs latest`: the newest checkpoint whose every file is committed in the lake, across mounts;
never one a crashed node left half-uploaded."""

import json
import os

import pytest

from tests.faultproxy import FaultProxy
from tests.helpers import cli_in_process
from tests.test_frameworks import run_dcp


def write(path, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(data)


def latest(mount, path, *extra):
    code, out, err = cli_in_process("latest", path, *extra)
    return code, out.strip(), err


def test_layouts_and_what_is_not_committed(mount):
    run = mount.path("run")
    assert latest(mount, mount.mountpoint)[0] == 1  # nothing there
    write(os.path.join(run, "checkpoint-10", "model.safetensors"), b"w" * 100)
    write(os.path.join(run, "checkpoint-10", "trainer_state.json"), b"{}")
    write(os.path.join(run, "checkpoint-20", "model.safetensors"), b"w" * 100)  # no trainer_state.json yet
    mount.sync()
    code, out, err = latest(mount, run)
    assert (code, out) == (0, os.path.join(run, "checkpoint-10"))
    assert "checkpoint-20 (missing trainer_state.json)" in err
    # From the mount's root, the run directory is not a checkpoint: its checkpoints are looked into.
    assert latest(mount, mount.mountpoint)[:2] == (0, os.path.join(run, "checkpoint-10"))

    lightning = mount.path("lightning")
    write(os.path.join(lightning, "epoch=0-step=10.ckpt"), b"a")
    mount.sync()
    with open(os.path.join(lightning, "epoch=1-step=20.ckpt"), "wb") as file:  # still being written
        file.write(b"b")
        file.flush()
        code, out, _ = latest(mount, lightning, "--json")
    report = json.loads(out)
    assert code == 0 and report["latest"]["path"].endswith("epoch=0-step=10.ckpt")
    assert report["latest"]["layout"] == "file" and report["latest"]["step"] == 10
    assert report["passed_over"][0]["uncommitted"] == ["epoch=1-step=20.ckpt"]

    # A DCP save that failed on one rank: the others' shards, committed, and no .metadata (DCP writes
    # it last). Seen in scripts/soak.py when a rank's mount was killed mid-save.
    import torch
    import torch.distributed.checkpoint

    dcp = mount.path("dcp")
    torch.distributed.checkpoint.save({"w": torch.zeros(4)}, checkpoint_id=os.path.join(dcp, "step-10"), no_dist=True)
    write(os.path.join(dcp, "step-20", "__0_0.distcp"), b"x")
    mount.sync()
    code, out, err = latest(mount, dcp)
    assert (code, out) == (0, os.path.join(dcp, "step-10")), err
    assert "step-20 (missing .metadata)" in err


def test_a_node_that_died_mid_save_leaves_the_previous_checkpoint_latest(mounter, s3_url, moto_server, tmp_path):
    pytest.importorskip("torch")
    url, endpoint = s3_url
    proxy = FaultProxy(moto_server.port)
    try:
        reader = mounter(url, ["--endpoint-url", endpoint], cache="reader-cache", name="reader")
        writers = [mounter(url, ["--endpoint-url", endpoint if rank < 3 else proxy.endpoint, "--s3-timeout", "1"],
                           cache=f"cache{rank}", name=f"rank{rank}") for rank in range(4)]
        for step in (100, 200):
            if step == 200:
                proxy.outage = True  # rank 3's node loses the store: its shard stays local
            run_dcp(tmp_path, [writer.path("run", f"step-{step}") for writer in writers], "save", world=4)
            for writer in writers[:3] if step == 200 else writers:
                writer.sync()
        writers[3].kill()  # and then the node dies
        code, out, err = latest(reader, reader.path("run"))
        assert (code, out) == (0, reader.path("run", "step-100")), err
        assert "step-200 (missing __3_0.distcp)" in err
        run_dcp(tmp_path, out, "load", world=4)
        reader.assert_clean_log()
    finally:
        proxy.stop()


def test_latest_reads_the_metadata_of_only_the_dcp_checkpoints_it_considers(tmp_path, monkeypatch):
    # On a new mount each `.metadata` read is a lake GET: a restart must not wait for every one.
    from ckptfs import latest as module

    read = []

    def dcp_files(path):
        read.append(os.path.basename(path))
        return ["__0_0.distcp", "__1_0.distcp"]

    monkeypatch.setattr(module, "dcp_files", dcp_files)
    monkeypatch.setattr(module, "committed", lambda path: True)
    for step in (10, 20, 30):
        write(str(tmp_path / f"step-{step}" / ".metadata"), b"m")
        write(str(tmp_path / f"step-{step}" / "__0_0.distcp"), b"x")
        write(str(tmp_path / f"step-{step}" / "__1_0.distcp"), b"x")
    best, passed = module.latest(str(tmp_path))
    assert best.path == str(tmp_path / "step-30") and passed == [] and read == ["step-30"]

    os.unlink(tmp_path / "step-30" / "__1_0.distcp")  # a shard the metadata names is not there
    read.clear()
    best, passed = module.latest(str(tmp_path))
    assert best.path == str(tmp_path / "step-20") and read == ["step-30", "step-20"]
    assert [(c.path, c.missing) for c in passed] == [(str(tmp_path / "step-30"), ["__1_0.distcp"])]
