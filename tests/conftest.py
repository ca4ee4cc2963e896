from __future__ import annotations

import os
import shutil
import uuid

import boto3
import pytest

from tests.helpers import MotoServer, Mount
from tests.s3model import TEST_CREDENTIALS as AWS_TEST_ENV

# A whole run writes tens of GB through its mounts and CI machines may have little disk to spare, while
# pytest keeps every test's tmp_path until the run ends and moto keeps every object over 16 MiB in an
# unlinked temporary file for as long as it runs. So a test gives back what it used once its teardown
# is over (its mounts are stopped by then): the buckets it made are emptied and deleted, and its
# tmp_path is removed if it passed. A failed test keeps its tmp_path to be read; a directory something
# is still mounted under is left alone, since removing it would reach through the mount.


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        item.ckptfs_failed = True
    if call.when == "teardown":
        _give_back(item)
    return report


def _give_back(item) -> None:
    for client, bucket in getattr(item, "ckptfs_buckets", ()):
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            client.delete_bucket(Bucket=bucket)
        except Exception:  # the server stopped with the session: it took its objects with it
            pass
    path = getattr(item, "ckptfs_tmp_path", None)
    if path is None or getattr(item, "ckptfs_failed", False) or _mounted_under(str(path)):
        return
    shutil.rmtree(path, ignore_errors=True)


def _mounted_under(path: str) -> list[str]:
    with open("/proc/mounts") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    return [point for point in points if point == path or point.startswith(path + os.sep)]


@pytest.fixture(autouse=True)
def _give_back_after_the_test(request, tmp_path):
    request.node.ckptfs_tmp_path = tmp_path


@pytest.fixture(scope="session")
def moto_server():
    for name, value in AWS_TEST_ENV.items():
        os.environ[name] = value
    os.environ.pop("AWS_PROFILE", None)
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def s3_url(request, moto_server):
    """A fresh bucket on the moto server; returns (store URL, endpoint)."""
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=moto_server.endpoint)
    client.create_bucket(Bucket=bucket)
    request.node.__dict__.setdefault("ckptfs_buckets", []).append((client, bucket))
    return f"s3://{bucket}/ckpt", moto_server.endpoint


@pytest.fixture(params=["local", "s3"])
def lake_url(request, tmp_path):
    """(store URL, extra mount arguments) for each kind of store."""
    if request.param == "local":
        return f"file://{tmp_path}/lake", []
    url, endpoint = request.getfixturevalue("s3_url")
    return url, ["--endpoint-url", endpoint]


@pytest.fixture
def mounter(tmp_path):
    """Start mounts with mounter(store_url, extra, cache=...); all are unmounted at teardown."""
    mounts: list[Mount] = []

    def start(store_url: str | None = None, extra: list[str] | None = None, *, cache: str = "cache",
              name: str = "mnt") -> Mount:
        mount = Mount(store_url or f"file://{tmp_path}/lake", str(tmp_path / name), str(tmp_path / cache),
                      str(tmp_path / f"{cache.replace('/', '-')}.log"), extra=extra)
        mounts.append(mount)
        return mount.start()

    yield start
    for mount in mounts:
        mount.kill()


@pytest.fixture
def mount(mounter, tmp_path):
    m = mounter()
    yield m
    m.assert_clean_log()
