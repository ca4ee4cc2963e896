"""Bad input gets a one-line error and a non-zero exit: no hang, no traceback."""

import os
import subprocess
import sys

import pytest


def ckptfs(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "ckptfs", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_clean_failure(result, expected: str):
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]


@pytest.fixture
def mountpoint(tmp_path):
    path = tmp_path / "mnt"
    path.mkdir()
    return str(path)


def test_unknown_store_url(mountpoint, tmp_path):
    assert_clean_failure(ckptfs("mount", "ftp://x/y", mountpoint, "--cache-dir", str(tmp_path / "c")),
                         "unknown store URL")


def test_upload_while_writing_below_the_smallest_round(mountpoint, tmp_path):
    assert_clean_failure(ckptfs("mount", mountpoint, "--cache-dir", str(tmp_path / "c"),
                                "--upload-while-writing", "1M"), "at least 8M")


def test_unreachable_endpoint(mountpoint, tmp_path, moto_server):
    from tests.helpers import free_port

    result = ckptfs("mount", "s3://b/p", mountpoint, "--cache-dir", str(tmp_path / "c"),
                    "--endpoint-url", f"http://127.0.0.1:{free_port()}")
    assert_clean_failure(result, "Could not connect")


def test_missing_bucket(mountpoint, tmp_path, moto_server):
    result = ckptfs("mount", "s3://missing-bucket/p", mountpoint, "--cache-dir", str(tmp_path / "c"),
                    "--endpoint-url", moto_server.endpoint)
    assert_clean_failure(result, "does not exist")


def test_no_credentials(mountpoint, tmp_path, moto_server):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "none")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    result = ckptfs("mount", "s3://bucket/p", mountpoint, "--cache-dir", str(tmp_path / "c"),
                    "--endpoint-url", moto_server.endpoint, env=env)
    assert_clean_failure(result, "credentials")


def test_mount_point_missing_or_not_empty(tmp_path):
    cache = str(tmp_path / "c")
    assert_clean_failure(ckptfs("mount", f"file://{tmp_path}/lake", str(tmp_path / "nope"), "--cache-dir", cache),
                         "does not exist")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    assert_clean_failure(ckptfs("mount", f"file://{tmp_path}/lake", str(busy), "--cache-dir", cache),
                         "not empty")


def test_cache_dir_not_writable(mountpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_clean_failure(ckptfs("mount", f"file://{tmp_path}/lake", mountpoint, "--cache-dir",
                                str(blocker / "cache")), "cannot create cache dir")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    assert_clean_failure(ckptfs("mount", f"file://{tmp_path}/lake", mountpoint, "--cache-dir", str(shared)),
                         "writable by other users")


def test_cache_dir_in_use_by_another_daemon(mount, tmp_path):
    other = tmp_path / "mnt2"
    other.mkdir()
    result = ckptfs("mount", f"file://{tmp_path}/lake", str(other), "--cache-dir", mount.cache_dir)
    assert_clean_failure(result, "in use by pid")


def test_status_and_sync_outside_a_mount(tmp_path):
    assert_clean_failure(ckptfs("status", str(tmp_path)), "not on a running ckptfs mount")
    assert_clean_failure(ckptfs("sync", str(tmp_path)), "not on a running ckptfs mount")
