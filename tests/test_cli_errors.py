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

    result = ckptfs("mount", "s3://bucket/p", mountpoint, "--cache-dir", str(tmp_path / "c"),
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
    assert_clean_failure(ckptfs("status", str(tmp_path)), "is not on a ckptfs mount")
    assert_clean_failure(ckptfs("sync", str(tmp_path)), "is not on a ckptfs mount")


# -- what a new user hit (issue 18): each of these passed silently or broke something before -----
def _unmount(path):
    subprocess.run(["fusermount3", "-u", path], capture_output=True)


def test_a_metrics_address_that_does_not_parse_or_is_taken_fails_the_mount(mountpoint, tmp_path):
    import socket

    cache = tmp_path / "c"
    result = ckptfs("mount", mountpoint, "--cache-dir", str(cache), "--metrics-address", "garbage")
    assert_clean_failure(result, "HOST:PORT")
    assert not os.path.ismount(mountpoint) and not cache.exists()  # and no empty cache dir left behind
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = ckptfs("mount", mountpoint, "--cache-dir", str(cache), "--metrics-address", f"127.0.0.1:{port}")
    assert_clean_failure(result, "cannot listen")
    assert not os.path.ismount(mountpoint)


def test_a_cache_dir_of_another_lake_is_refused_or_reset_but_never_with_unpublished_changes(tmp_path):
    cache, first, second = str(tmp_path / "cache"), tmp_path / "m1", tmp_path / "m2"
    first.mkdir()
    second.mkdir()
    lake_a, lake_b = f"file://{tmp_path}/a", f"file://{tmp_path}/b"
    assert ckptfs("mount", lake_a, str(first), "--cache-dir", cache).returncode == 0
    try:
        with open(first / "x.txt", "wb") as file:
            file.write(b"lake a")
    finally:
        assert ckptfs("unmount", str(first)).returncode == 0
    result = ckptfs("mount", lake_b, str(second), "--cache-dir", cache)
    assert_clean_failure(result, "belongs to")
    assert lake_a.removeprefix("file://") in result.stderr and lake_b.removeprefix("file://") in result.stderr
    assert ckptfs("mount", lake_b, str(second), "--cache-dir", cache, "--reset-cache-dir").returncode == 0
    try:
        assert os.listdir(second) == []  # lake b's tree, not lake a's x.txt
        with open(second / "y.txt", "wb") as file:
            file.write(b"lake b")
    finally:
        assert ckptfs("unmount", str(second), "--no-drain").returncode == 0  # y.txt may stay unpublished
    status = subprocess.run([sys.executable, "-c", (
        "from ckptfs.cache.journal import Journal; import sys; j = Journal(sys.argv[1]); print(j.outbox_length())"),
        os.path.join(cache, "journal.sqlite")], capture_output=True, text=True, check=True)
    if int(status.stdout) > 0:
        assert_clean_failure(ckptfs("mount", lake_a, str(first), "--cache-dir", cache, "--reset-cache-dir"),
                             "not yet in")


def test_control_commands_refuse_a_path_that_is_not_on_a_ckptfs_mount(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for command in (["snapshot"], ["prefetch"], ["status"], ["refresh"], ["latest"], ["sync"], ["log"], ["du"],
                    ["retention", "show"], ["tag", "--list"]):
        result = ckptfs(*command, str(plain))
        assert_clean_failure(result, f"{plain} is not on a ckptfs mount")
    assert os.listxattr(plain) == []  # nothing was set on the host file system


def test_a_mistyped_store_url_creates_nothing(mountpoint, tmp_path):
    result = subprocess.run([sys.executable, "-m", "ckptfs", "mount", "s3//bucket/prefix", mountpoint,
                             "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=60)
    assert_clean_failure(result, "looks mistyped")
    assert not (tmp_path / "s3").exists() and not (tmp_path / "c").exists()


def test_bad_values_are_refused_with_what_is_expected(mountpoint, tmp_path):
    cache = str(tmp_path / "c")
    assert_clean_failure(ckptfs("mount", mountpoint, "--cache-dir", cache, "--refresh", "-1"), "0 or more")
    assert_clean_failure(ckptfs("mount", mountpoint, "--cache-dir", cache, "--cache-size", "0"), "more than 0")
    negative = ckptfs("mount", mountpoint, "--cache-dir", cache, "--cache-size", "-5G")
    assert negative.returncode == 2 and "not a size: '-5G'" in negative.stderr
    assert_clean_failure(ckptfs("mount", "s3://Not_A_Bucket/p", mountpoint, "--cache-dir", cache),
                         "not an S3 bucket name")
    assert ckptfs("--version").stdout.startswith("ckptfs ")
    for command in (["unmount", "--help"], ["fsck", "--help"], ["status", "--help"], ["mount", "--help"]):
        text = ckptfs(*command).stdout
        assert "--json" not in text or "print JSON" in text
        assert "--timeout" not in text or "seconds" in text


def test_a_mount_refused_because_its_cache_dir_is_in_use_creates_no_lake(mounter, tmp_path):
    running_mount = mounter(f"file://{tmp_path}/a", cache="c")
    other = tmp_path / "other"
    other.mkdir()
    result = ckptfs("mount", f"file://{tmp_path}/b", str(other), "--cache-dir", running_mount.cache_dir)
    assert_clean_failure(result, "in use")
    assert not (tmp_path / "b").exists()


def test_fsck_and_gc_of_a_missing_lake_create_nothing(tmp_path):
    for command in (["fsck"], ["gc"]):
        assert_clean_failure(ckptfs(*command, f"file://{tmp_path}/nolake"), "no lake")
    assert not (tmp_path / "nolake").exists()


def test_a_cache_size_the_disk_cannot_hold_is_warned_about(mountpoint, tmp_path):
    result = ckptfs("mount", mountpoint, "--cache-dir", str(tmp_path / "c"), "--cache-size", "900T",
                    env={**os.environ, "CKPTFS_HOME": str(tmp_path / "home")})
    try:
        assert result.returncode == 0, result.stderr
        assert "warning: --cache-size 900" in result.stderr and "ENOSPC" in result.stderr
    finally:
        _unmount(mountpoint)
