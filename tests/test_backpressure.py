"""A cache far smaller than what is written, in front of a slow store: writers wait, nothing fails."""

import hashlib
import os

import pytest

from tests.faultproxy import FaultProxy

MIB = 1024 * 1024


@pytest.fixture
def slow_proxy(moto_server):
    proxy = FaultProxy(moto_server.port)
    proxy.delay_seconds = 0.15
    yield proxy
    proxy.stop()


def test_writers_wait_for_uploads_instead_of_failing(mounter, s3_url, slow_proxy):
    url, _ = s3_url
    # 64 MiB cache: 16 MiB for fetched chunks, 4 MiB for the journal, 44 MiB for staging files.
    mount = mounter(url, ["--endpoint-url", slow_proxy.endpoint, "--cache-size", "64M"])
    digests = {}
    for index in range(10):  # 160 MiB in all: over three times the staging budget
        data = os.urandom(16 * MIB)
        with open(mount.path(f"f{index}"), "wb") as file:
            file.write(data)
        digests[f"f{index}"] = hashlib.sha256(data).hexdigest()
    status = mount.status()
    assert status["backpressure_waits"] > 0, "writers never waited: the test did not exercise backpressure"
    # Never more staged than the budget plus one FUSE write (1 MiB at most) of the file being written.
    assert status["peak_staged_bytes"] <= status["staging_limit_bytes"] + MIB, status
    mount.cli("sync", "--timeout", "300", mount.mountpoint)
    for name, digest in digests.items():
        with open(mount.path(name), "rb") as file:
            assert hashlib.sha256(file.read()).hexdigest() == digest
    print(f"backpressure: {status['backpressure_waits']} waits, {status['backpressure_seconds']}s, "
          f"peak staged {status['peak_staged_bytes'] / MIB:.1f} MiB of {status['staging_limit_bytes'] / MIB:.0f}")
    mount.assert_clean_log()
