"""The lake's lifecycle through real mounts and the real commands, on both kinds of lake: a run that
rotates its checkpoints as Hugging Face does, a policy, two GC runs a grace apart, a tag, a hold;
after every run `ckptfs fsck --verify-data` is clean and every kept version reads back."""

from __future__ import annotations

import datetime
import json
import os
import stat
import subprocess
import sys
import time

import torch

from tests.helpers import read, write

GRACE = 3  # the lake's gc_grace_s: a whole mark-and-sweep in seconds


def ckptfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ckptfs", *args], capture_output=True, text=True, timeout=300)


def ok(*args: str) -> str:
    result = ckptfs(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def gc(url: str, extra: list[str]) -> dict:
    return json.loads(ok("gc", url, *extra, "--json"))


def fsck_clean(url: str, extra: list[str]) -> dict:
    return json.loads(ok("fsck", url, *extra, "--verify-data", "--json"))["lake"]


def test_a_rotating_run_a_policy_and_gc_free_the_rotated_checkpoints_and_keep_the_rest(mounter, lake_url):
    url, extra = lake_url
    settings = ["--lake-setting", f"gc_grace_s={GRACE}", "--lake-setting", "max_clock_skew_s=0",
                "--lake-setting", "late_publish_s=0"]
    mount = mounter(url, extra + settings, cache="c1", name="m1")
    run = mount.path("run")
    os.makedirs(run)
    saved = {}
    for step in range(1, 7):  # save_total_limit=2: checkpoint-N, the oldest removed after each save
        directory = os.path.join(run, f"checkpoint-{step}")
        os.makedirs(directory)
        state = {"w": torch.randn(256, 256, generator=torch.Generator().manual_seed(step)), "step": step}
        torch.save(state, os.path.join(directory, "model.pt"))
        write(os.path.join(directory, "trainer_state.json"), json.dumps({"step": step}).encode())
        saved[step] = read(os.path.join(directory, "model.pt"))
        if step > 2:
            subprocess.run(["rm", "-rf", os.path.join(run, f"checkpoint-{step - 2}")], check=True)
        if step == 3:
            ok("tag", directory, "best")  # kept whatever the policy, browsable by `tag --list`
            time.sleep(0.01)
            instant = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
            time.sleep(0.01)
    mount.sync()
    # Rotated and live checkpoints are told apart in .versions: sticky bit and `deleted <time>`.
    rotated = mount.path(".versions", "run", "checkpoint-1")
    live = mount.path(".versions", "run", "checkpoint-6")
    assert os.stat(rotated).st_mode & stat.S_ISVTX and not os.stat(live).st_mode & stat.S_ISVTX
    assert os.getxattr(rotated, "user.ckptfs.state").startswith(b"deleted ")
    assert os.getxattr(live, "user.ckptfs.state") == b"live"
    # Time travel: the run as it was after step 3; the tag as it was made.
    assert sorted(os.listdir(mount.path(".at", instant, "run"))) == ["checkpoint-2", "checkpoint-3"]
    assert torch.load(mount.path(".at", instant, "run", "checkpoint-2", "model.pt"))["step"] == 2
    ok("refresh", mount.mountpoint)  # a sweep: the mount reads the lake's tags
    assert sorted(os.listdir(mount.path(".tags", "best"))) == ["model.pt", "trainer_state.json"]
    assert torch.load(mount.path(".tags", "best", "model.pt"))["step"] == 3

    ok("retention", "set", mount.mountpoint, "--keep-last", "1")
    shown = json.loads(ok("retention", "show", run, "--json"))
    assert shown["governed_by"] == "" and shown["policy"] == {"keep_last": 1}
    assert json.loads(ok("tag", "--list", mount.mountpoint, "--json"))[0]["name"] == "best"
    before = json.loads(ok("du", run, "--json"))["total"]
    assert before["versions"] == 12 and before["stored_bytes"] > 0 and before["dollars_per_month"] > 0

    time.sleep(GRACE + 1)
    first = gc(url, extra)
    assert first["deleted"]["objects"] == 0 and first["marked"]["objects"] > 0
    assert fsck_clean(url, extra)["collected"] == 0
    time.sleep(GRACE + 1)
    second = gc(url, extra)
    assert second["deleted"]["bytes"] > 0
    assert second["stored_bytes"]["after"] < second["stored_bytes"]["before"]
    lake = fsck_clean(url, extra)
    # Checkpoints 1 and 4 (two files each) and 2's trainer_state.json: 3 is tagged, 5 and 6 are live,
    # and 2's model.pt was read (through .at above), so this mount holds it.
    assert lake["collected"] == 5

    # What is kept reads back: the live checkpoints, and the tagged one through .versions.
    for step in (5, 6):
        assert read(os.path.join(run, f"checkpoint-{step}", "model.pt")) == saved[step]
    tagged_dir = mount.path(".versions", "run", "checkpoint-3", "model.pt")
    (version,) = os.listdir(tagged_dir)
    assert torch.load(os.path.join(tagged_dir, version))["step"] == 3
    time.sleep(2)  # the hold of what was just read is written within a second of the open
    history = json.loads(ok("log", run, "--json"))
    by_path = {(row["path"], row.get("deleted", False)): row for row in history}
    assert by_path[("run/checkpoint-3/model.pt", False)]["rules"] == ["tag best", "held"]  # read via .tags
    assert by_path[("run/checkpoint-1/model.pt", False)]["collected"]
    # Read back above: held too, though this mount wrote it (a job may resume on the node that saved).
    assert by_path[("run/checkpoint-6/model.pt", False)]["rules"] == ["live", "held"]
    assert by_path[("run/checkpoint-6/trainer_state.json", False)]["rules"] == ["live"]  # never read
    assert by_path[("run/checkpoint-6/model.pt", False)]["mount"]
    ok("refresh", mount.mountpoint)  # a sweep: the mount learns what GC collected
    assert os.listdir(mount.path(".versions", "run", "checkpoint-1", "model.pt")) == []
    assert os.listdir(mount.path(".at", instant, "run", "checkpoint-2")) == ["model.pt"]  # the rest collected
    after = json.loads(ok("du", run, "--json"))["total"]
    assert after["stored_bytes"] < before["stored_bytes"]

    # A fresh mount (empty cache dir) reads the live tree whole.
    fresh = mounter(url, extra, cache="c2", name="m2")
    assert read(fresh.path("run", "checkpoint-6", "model.pt")) == saved[6]
    ok("untag", "best", fresh.mountpoint)
    assert json.loads(ok("tag", "--list", fresh.mountpoint, "--json")) == []


def test_a_checkpoint_a_job_resumed_from_is_held_after_rotation(mounter, tmp_path):
    url = f"file://{tmp_path}/lake"
    settings = ["--lake-setting", f"gc_grace_s={GRACE}", "--lake-setting", "max_clock_skew_s=0"]
    writer = mounter(url, settings, cache="c1", name="m1")
    torch.save({"step": 1}, writer.path("ckpt-1.pt"))
    writer.sync()
    reader = mounter(url, [], cache="c2", name="m2")  # the resumed job's node
    assert torch.load(reader.path("ckpt-1.pt"))["step"] == 1
    time.sleep(2)  # the hold is written within a second of the open
    os.unlink(writer.path("ckpt-1.pt"))  # rotation
    torch.save({"step": 2}, writer.path("ckpt-2.pt"))
    writer.sync()
    ok("retention", "set", writer.mountpoint, "--keep-last", "1")
    time.sleep(GRACE + 1)
    gc(url, [])
    time.sleep(GRACE + 1)
    report = gc(url, [])
    assert report["versions"]["kept_by_rule"].get("held") == 1
    assert fsck_clean(url, [])["collected"] == 0


def test_a_look_holds_nothing_a_read_holds_the_version(mounter, tmp_path):
    """`ckptfs latest` reads the `.metadata` of every DCP checkpoint it considers, and asked every few
    seconds it held them all for 7 days: soak run 8's lake kept 557 manifests where its policy kept
    ~200. Opens with O_NOATIME (how `latest` reads) are looks and hold nothing; a plain read holds."""
    import torch.distributed.checkpoint as dcp

    url = f"file://{tmp_path}/lake"
    writer = mounter(url, [], cache="c1", name="m1")
    for step in (1, 2):
        dcp.save({"w": torch.full((64,), float(step))}, checkpoint_id=writer.path("run", f"step-{step}"))
    writer.sync()
    reader = mounter(url, [], cache="c2", name="m2")  # a restarting job's node
    named = json.loads(ok("latest", reader.path("run"), "--json"))["latest"]
    assert named["path"] == reader.path("run", "step-2") and named["complete"]
    descriptor = os.open(reader.path("run", "step-1", ".metadata"), os.O_RDONLY | os.O_NOATIME)
    assert os.read(descriptor, 1 << 20)  # a look through the mount: bytes, no hold
    os.close(descriptor)
    distcp = sorted(name for name in os.listdir(reader.path("run", "step-2")) if name.endswith(".distcp"))
    assert read(reader.path("run", "step-2", distcp[0]))  # the job resumes: a use
    # The hold of what was read is written within a second of the open; on a loaded machine, later.
    deadline = time.monotonic() + 60
    while True:
        rules = {row["path"]: row["rules"] for row in json.loads(ok("log", reader.path("run"), "--json"))
                 if "rules" in row}
        if "held" in rules[f"run/step-2/{distcp[0]}"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert rules[f"run/step-2/{distcp[0]}"] == ["live", "held"]  # the holds object now lists every open
    assert rules["run/step-2/.metadata"] == ["live"]
    assert rules["run/step-1/.metadata"] == ["live"]
