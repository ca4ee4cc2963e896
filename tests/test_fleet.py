"""Deploying like the tools operators run: mount(8) and /etc/fstab through mount.fuse.ckptfs,
systemd's readiness (Type=notify), and one configuration file with named lakes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from ckptfs.mount_helper import HelperError, command
from tests.helpers import is_mounted


def ckptfs(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ckptfs", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def status(mountpoint: str) -> dict:
    return json.loads(os.getxattr(mountpoint, "user.ckptfs.status"))


def test_mount_options_map_to_flags():
    assert command(["s3://b/p", "/ckpt", "-o", "rw,_netdev,nofail,x-systemd.automount,cache_dir=/nvme/c,"
                    "cache_size=200G,allow_other,endpoint_url=http://h:9000"]) == [
        "mount", "s3://b/p", "/ckpt", "--cache-dir", "/nvme/c", "--cache-size", "200G", "--allow-other",
        "--endpoint-url", "http://h:9000"]
    assert command(["ckptfs", "/ckpt", "-n"]) == ["mount", "/ckpt"]  # the embedded lake
    with pytest.raises(HelperError, match="unknown mount option 'cache=1'"):
        command(["s3://b/p", "/ckpt", "-o", "cache=1"])
    with pytest.raises(HelperError, match="read-write"):
        command(["s3://b/p", "/ckpt", "-o", "ro"])


@pytest.mark.skipif(os.geteuid() != 0, reason="mount(8) with a helper in /sbin needs root")
def test_mount_t_fuse_ckptfs_and_an_fstab_line(tmp_path):
    helper = shutil.which("mount.fuse.ckptfs", path=os.path.dirname(sys.executable))
    assert helper, "pip install puts mount.fuse.ckptfs next to python"
    if os.path.realpath("/sbin/mount.fuse.ckptfs") != os.path.realpath(helper):
        os.symlink(helper, str(tmp_path / "link"))
        os.replace(str(tmp_path / "link"), "/sbin/mount.fuse.ckptfs")  # what scripts/install.sh does
    mountpoint = tmp_path / "ckpt"
    mountpoint.mkdir()
    lake, cache = f"file://{tmp_path}/lake", tmp_path / "cache"
    options = f"_netdev,nofail,x-systemd.automount,cache_dir={cache},cache_size=1G,refresh=0"
    result = subprocess.run(["mount", "-t", "fuse.ckptfs", lake, str(mountpoint), "-o", options],
                            capture_output=True, text=True, timeout=120)
    try:
        assert result.returncode == 0, result.stderr
        assert is_mounted(str(mountpoint)) and status(str(mountpoint))["refresh_interval_s"] == 0
        (mountpoint / "x.txt").write_bytes(b"through mount(8)")
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True)
    for _ in range(100):  # the daemon drains after the unmount, then lets the cache dir go
        if not os.path.exists(cache / "lock") or ckptfs("fsck", "--cache-dir", str(cache)).returncode == 0:
            break
        time.sleep(0.1)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{lake} {mountpoint} fuse.ckptfs {options} 0 0\n")
    result = subprocess.run(["mount", "--fstab", str(fstab), str(mountpoint)], capture_output=True, text=True,
                            timeout=120)
    try:
        assert result.returncode == 0, result.stderr
        assert (mountpoint / "x.txt").read_bytes() == b"through mount(8)"
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True)


def test_systemd_hears_ready_once_the_mount_answers(tmp_path):
    address = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(60)
    mountpoint = tmp_path / "ckpt"
    mountpoint.mkdir()
    daemon = subprocess.Popen([sys.executable, "-m", "ckptfs", "mount", f"file://{tmp_path}/lake", str(mountpoint),
                               "--foreground", "--cache-dir", str(tmp_path / "cache"),
                               "--log-file", str(tmp_path / "log")], env={**os.environ, "NOTIFY_SOCKET": address})
    try:
        message = listener.recv(1024).decode()
        assert "READY=1" in message
        assert status(str(mountpoint))["pid"] == daemon.pid  # it answers when systemd hears READY
        daemon.terminate()  # systemctl stop
        assert "STOPPING=1" in listener.recv(1024).decode()
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        listener.close()


def test_one_config_file_names_lakes_and_flags_win(tmp_path):
    mountpoint = tmp_path / "ckpt"
    mountpoint.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'[defaults]\nrefresh = 0\ncache_size = "2G"\n\n[lakes.runs]\nurl = "file://{tmp_path}/lake"\n'
                      f'mountpoint = "{mountpoint}"\ncache_dir = "{tmp_path}/cache"\n')
    result = ckptfs("mount", "runs", "--config", str(config))
    assert result.returncode == 0, result.stderr
    try:
        assert status(str(mountpoint))["refresh_interval_s"] == 0
    finally:
        assert ckptfs("unmount", str(mountpoint)).returncode == 0
    result = ckptfs("mount", "runs", "--config", str(config), "--refresh", "3")
    assert result.returncode == 0, result.stderr
    try:
        assert status(str(mountpoint))["refresh_interval_s"] == 3  # a flag wins over the file
    finally:
        assert ckptfs("unmount", str(mountpoint)).returncode == 0
    config.write_text('[lakes.runs]\nurl = "file:///x"\ncache_sise = "2G"\n')
    result = ckptfs("mount", "runs", "--config", str(config))
    assert result.returncode == 1 and "unknown key 'cache_sise'" in result.stderr and str(config) in result.stderr
    config.write_text('[lakes.runs]\nurl = "file:///x"\n')
    assert "no lake named 'nothere'" in ckptfs("mount", "nothere", "--config", str(config)).stderr


def test_the_lake_records_who_wrote_each_version(tmp_path):
    mountpoint = tmp_path / "ckpt"
    mountpoint.mkdir()
    env = {**os.environ, "SLURM_JOB_ID": "4242"}
    result = ckptfs("mount", f"file://{tmp_path}/lake", str(mountpoint), "--cache-dir", str(tmp_path / "cache"),
                    env=env)
    assert result.returncode == 0, result.stderr
    try:
        (mountpoint / "model.pt").write_bytes(b"weights" * 1000)
        assert ckptfs("sync", str(mountpoint)).returncode == 0
        assert status(str(mountpoint))["writer"]["job"]["slurm_job_id"] == "4242"
        # announced under the id it publishes with (it registers while it reads the lake at start)
        assert os.listdir(tmp_path / "lake" / "mounts") == [status(str(mountpoint))["mount_id"]]
        rows = json.loads(ckptfs("log", str(mountpoint / "model.pt"), "--json").stdout)
        writer = rows[0]["writer"]
        assert writer["host"] == socket.gethostname() and writer["job"] == {"slurm_job_id": "4242"}
        assert "job 4242" in ckptfs("log", str(mountpoint / "model.pt")).stdout
    finally:
        assert ckptfs("unmount", str(mountpoint)).returncode == 0
