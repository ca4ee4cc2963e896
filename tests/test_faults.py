"""S3 faults between boto3 and the moto server: errors, resets, stalls, slow bodies, an outage, denial.

Writes never wait for the store; uploads retry until everything is committed and verifies.
"""

import hashlib
import os
import shutil
import time

import pytest

from ckptfs.lake import Lake
from ckptfs.lake.check import check_lake
from ckptfs.store import open_store
from tests.faultproxy import FaultProxy


@pytest.fixture
def proxy(moto_server):
    value = FaultProxy(moto_server.port, seed=5, stall_seconds=3)
    yield value
    value.stop()


def write_files(mount, count: int, size: int, prefix: str) -> dict[str, str]:
    digests = {}
    for index in range(count):
        data = os.urandom(size)
        name = f"{prefix}-{index}"
        with open(mount.path(name), "wb") as file:
            file.write(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def assert_committed_and_identical(mount, digests):
    for name, digest in digests.items():
        with open(mount.path(name), "rb") as file:
            assert hashlib.sha256(file.read()).hexdigest() == digest, name
        assert os.getxattr(mount.path(name), "user.ckptfs.state").startswith(b"committed"), name


def assert_lake_verifies(url, moto_server):
    report = check_lake(Lake(open_store(url, endpoint_url=moto_server.endpoint)), verify_data=True)
    assert report.problems == []


def test_a_fifth_of_requests_failing_in_every_way(mounter, s3_url, proxy, moto_server, tmp_path):
    url, _ = s3_url
    mount = mounter(url, ["--endpoint-url", proxy.endpoint, "--s3-timeout", "1"])
    proxy.fault_rate = 0.2
    digests = write_files(mount, 12, 3_000_000, "f")
    mount.cli("sync", "--timeout", "300", mount.mountpoint)
    status = mount.status()
    assert status["store_retries"] > 0, f"faults injected: {dict(proxy.counts)}"
    assert_committed_and_identical(mount, digests)
    # A fresh mount reads everything back through the same faults.
    mount.unmount()
    shutil.rmtree(mount.cache_dir)
    fresh = mounter(url, ["--endpoint-url", proxy.endpoint, "--s3-timeout", "1"], cache="fresh")
    assert_committed_and_identical(fresh, digests)
    proxy.fault_rate = 0
    assert_lake_verifies(url, moto_server)
    print(f"faults injected: {dict(proxy.counts)}")
    assert all(proxy.counts[kind] > 0 for kind in ("500", "503", "reset", "stall", "slow"))


OUTAGE_SECONDS = float(os.environ.get("CKPTFS_TEST_OUTAGE_SECONDS", "10"))  # longer runs: set it to 120; the
# layer test (test_files.py::test_an_outage_of_ten_minutes_loses_nothing_and_writes_never_wait) covers ten minutes


def test_an_outage_of_tens_of_seconds(mounter, s3_url, proxy, moto_server):
    url, _ = s3_url
    mount = mounter(url, ["--endpoint-url", proxy.endpoint, "--s3-timeout", "2"])
    proxy.outage = True
    started = time.monotonic()
    digests = write_files(mount, 8, 4_000_000, "during-outage")
    assert time.monotonic() - started < 15, "writes waited for the store"
    timed_out = mount.cli("sync", "--timeout", "3", mount.mountpoint, check=False)
    assert timed_out.returncode == 1
    assert "not committed after 3s" in timed_out.stderr and "last error" in timed_out.stderr
    status = mount.status()
    assert status["store_retrying"] and status["uploading_files"] + status["events_pending"] > 0
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - started)))
    proxy.outage = False
    mount.cli("sync", "--timeout", "300", mount.mountpoint)
    assert_committed_and_identical(mount, digests)
    assert mount.status()["store_retrying"] is False
    assert_lake_verifies(url, moto_server)


@pytest.mark.parametrize(("fault", "message"), [("deny", "access denied"),
                                               ("bucket_missing", "bucket does not exist")])
def test_permanent_errors_are_reported_and_staged_data_kept(mounter, s3_url, proxy, moto_server, fault, message):
    url, _ = s3_url
    mount = mounter(url, ["--endpoint-url", proxy.endpoint])
    setattr(proxy, fault, True)
    digests = write_files(mount, 2, 2_000_000, "denied")
    result = mount.cli("sync", "--timeout", "5", mount.mountpoint, check=False)
    assert result.returncode == 1 and message in result.stderr.lower()
    assert message in (mount.status()["last_error"] or "").lower()
    assert message in mount.log().lower()
    setattr(proxy, fault, False)
    mount.cli("sync", "--timeout", "120", mount.mountpoint)
    assert_committed_and_identical(mount, digests)
    assert_lake_verifies(url, moto_server)
