"""Security basics: credentials never leave the AWS chain; --allow-other keeps kernel permission checks."""

import json
import os

from tests.faultproxy import FaultProxy
from tests.helpers import Mount

SECRET = "ckptfs-test-secret-3b1f9e"


def test_credentials_never_appear_in_argv_logs_or_status(s3_url, moto_server, tmp_path):
    url, _ = s3_url
    proxy = FaultProxy(moto_server.port)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="AKIDCKPTFSTEST", AWS_SECRET_ACCESS_KEY=SECRET)
    mount = Mount(url, str(tmp_path / "mnt"), str(tmp_path / "cache"), str(tmp_path / "daemon.log"),
                  extra=["--endpoint-url", proxy.endpoint, "-v"], env=env).start()
    try:
        with open(mount.path("f"), "wb") as file:
            file.write(os.urandom(3_000_000))
        proxy.deny = True  # errors get logged and shown: they must not carry the secret either
        with open(mount.path("g"), "wb") as file:
            file.write(os.urandom(3_000_000))
        mount.cli("sync", "--timeout", "4", mount.mountpoint, check=False)
        proxy.deny = False
        mount.sync()
        with open(f"/proc/{mount.process.pid}/cmdline", "rb") as cmdline:
            assert SECRET.encode() not in cmdline.read()
        status = json.dumps(mount.status())
        assert SECRET not in status and "AKIDCKPTFSTEST" not in status
        assert SECRET not in mount.cli("status", mount.mountpoint).stdout
    finally:
        mount.unmount()
        proxy.stop()
    log = mount.log()
    assert "access denied" in log.lower()  # the errors were logged, so the check below means something
    assert SECRET not in log and "AKIDCKPTFSTEST" not in log


def test_allow_other_implies_default_permissions(mounter):
    mount = mounter(extra=["--allow-other"])
    with open("/proc/mounts") as mounts:
        options = next(line.split()[3] for line in mounts if line.split()[1] == mount.mountpoint)
    assert "default_permissions" in options.split(",") and "allow_other" in options.split(",")


def test_cache_dir_is_private(mount):
    assert os.stat(mount.cache_dir).st_mode & 0o777 == 0o700
