"""scripts/soak.py as CI runs it (2 minutes of soak after a short baseline and stress): a job of two
ranks on two mounts of one lake on the S3 model, through failing requests, an outage, a mount
SIGKILLed mid-save and the whole job restarted on fresh mounts, under a lake policy that keeps what
was current in the last 30 s and garbage collection every minute. Its timing targets are checked by
the script's printout, never here; this checks what must hold on any machine."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_short_soak_loses_nothing_and_every_fault_is_seen(tmp_path):
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "soak.py"), "--minutes", "2", "--outage", "20",
         "--baseline-saves", "2", "--stress-saves", "2", "--mib", "16", "--interval", "3",
         "--stress-cache-size", "12M", "--keep-within", "30s", "--gc-every", "1m", "--gc-grace", "10",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1500, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.load(open(tmp_path / "soak.json"))
    figures = report["figures"]
    verified = figures["verified"]
    assert verified["failures"] == [] and verified["loaded_and_equal"] >= 3, verified
    # what the policy would let go was loaded while it still kept it, as an evaluation job would
    assert verified["loaded_while_the_run_went_on"] > 0, verified
    # The collector ran on the mounts beside the saves (what it deletes is the documented run's figure:
    # in two minutes, with a run a minute, little is past the policy and a grace; a run the outage or
    # a kill cut short is allowed, and the lock a killed run left stops the others for 10 minutes).
    assert figures["gc"]["runs"] > 0, figures["gc"]
    kinds = [fault["kind"] for fault in report["faults"]]
    assert kinds == ["failing requests", "outage", "mount SIGKILLed mid-save", "job killed, restarted on fresh mounts"]
    restarted = [r for r in figures["recoveries"] if r["fault"] == "job killed, restarted on fresh mounts"]
    assert restarted, figures["recoveries"]  # training resumed from what latest named, on empty cache dirs
    # the new mounts (new mountpoints, as on new nodes) started after the kill, not before it
    assert restarted[0]["until_mounts_start_s"] >= 0, restarted
    outage = figures["faults_visible_share_of_samples"]["outage"]
    assert outage["in_status"] > 0 and outage["in_metrics"] > 0, outage  # both said the store was failing
    assert figures["durable"] > 0 and figures["saves"] > 10
    assert figures["spilled_bytes_max"]["stress"] > 0  # the stress phase's small cache did spill
    assert os.path.getsize(tmp_path / "soak.png") > 10_000
    by_kind = figures["lake_objects_by_kind"]  # what the lake's object count is made of
    assert by_kind["end"].get("packs", 0) > 0 and by_kind["end"].get("log", 0) > 0, by_kind
    last = [s["lake"] for s in report["samples"] if s["phase"] == "soak" and s["lake"].get("kinds")][-1]
    assert by_kind["end"] == last["kinds"] and sum(last["kinds"].values()) == last["objects"], last
