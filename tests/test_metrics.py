"""Prometheus metrics and the age of the oldest pending version."""

import os
import time
import urllib.request

from tests.faultproxy import FaultProxy
from tests.helpers import free_port


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith("ckptfs_")}


def test_metrics_report_the_backlog_and_its_age(mounter, s3_url, moto_server):
    url, _ = s3_url
    proxy = FaultProxy(moto_server.port)
    port = free_port()
    try:
        mount = mounter(url, ["--endpoint-url", proxy.endpoint, "--metrics-address", f"127.0.0.1:{port}"])
        proxy.outage = True
        with open(mount.path("stuck"), "wb") as file:
            file.write(os.urandom(2_000_000))
        time.sleep(2.5)
        during = scrape(port)
        status = mount.status()
        assert during["ckptfs_uploading_files"] == 1 and during["ckptfs_store_retrying"] == 1
        assert during["ckptfs_oldest_pending_age_seconds"] >= 1
        assert status["oldest_pending_age_s"] >= 1
        proxy.outage = False
        mount.sync()
        time.sleep(1.2)
        after = scrape(port)
        assert after["ckptfs_uploading_files"] == 0 and after["ckptfs_oldest_pending_age_seconds"] == 0
        assert after["ckptfs_committed_versions_total"] == 1
        assert after["ckptfs_store_retries_total"] > 0
    finally:
        proxy.stop()
