from __future__ import annotations

import os
import uuid

import boto3
import pytest

from tests.helpers import MotoServer, Mount
from tests.s3model import TEST_CREDENTIALS as AWS_TEST_ENV


@pytest.fixture(scope="session")
def moto_server():
    for name, value in AWS_TEST_ENV.items():
        os.environ[name] = value
    os.environ.pop("AWS_PROFILE", None)
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def s3_url(moto_server):
    """A fresh bucket on the moto server; returns (store URL, endpoint)."""
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server.endpoint).create_bucket(Bucket=bucket)
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
