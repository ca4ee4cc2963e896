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
        mount = mounter(url, ["--endpoint-url", proxy.endpoint, "--metrics-address", f"127.0.0.1:{port}",
                              "--refresh", "0"])
        time.sleep(1)  # the start-up work (chunk listing, snapshot check) is done
        before = mount.status()["store_requests"]
        proxy.by_kind.clear()
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
        # Every request the proxy saw is counted, by type, failed attempts included.
        counted = mount.status()["store_requests"]
        made = {kind: counted.get(kind, 0) - before.get(kind, 0) for kind in counted}
        assert {kind: n for kind, n in made.items() if n} == dict(proxy.by_kind)
        assert made["PUT"] > 3 and after['ckptfs_store_requests_total{kind="PUT"}'] == counted["PUT"]
        # What an operator alerts on: failed requests by type, bytes at risk, the save stall.
        assert after['ckptfs_store_errors_total{class="temporary",kind="PUT"}'] > 0
        assert during["ckptfs_at_risk_bytes"] >= 2_000_000 and after["ckptfs_at_risk_bytes"] == 0
        assert after["ckptfs_write_latency_seconds_count"] >= 1 and after["ckptfs_close_latency_seconds_count"] >= 1
        assert after['ckptfs_write_latency_seconds_bucket{le="+Inf"}'] == after["ckptfs_write_latency_seconds_count"]
    finally:
        proxy.stop()


def test_metrics_report_egress_and_the_cache_hit_ratio(mounter, tmp_path):
    port = free_port()
    writer = mounter(f"file://{tmp_path}/lake", cache="c1", name="w")
    data = os.urandom(3_000_000)
    with open(writer.path("model.pt"), "wb") as file:
        file.write(data)
    writer.sync()
    reader = mounter(f"file://{tmp_path}/lake", ["--metrics-address", f"127.0.0.1:{port}"], cache="c2", name="r")
    for _ in range(2):  # cold, then served by the chunk cache (the page cache is bypassed by reopening)
        with open(reader.path("model.pt"), "rb") as file:
            assert file.read() == data
        with open("/proc/sys/vm/drop_caches", "w") as caches:
            caches.write("1\n")
    time.sleep(1.2)
    figures = scrape(port)
    assert figures["ckptfs_fetched_bytes_total"] >= 3_000_000
    assert 0 < figures["ckptfs_cache_hit_ratio"] < 1
