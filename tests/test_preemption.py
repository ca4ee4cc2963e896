"""A preempted node: SIGTERM, then SIGKILL 30 s later. The daemon drains for at most --drain-timeout,
names what is not in the lake, and the next mount on the same cache dir uploads it."""

from __future__ import annotations

import os
import signal
import time

from tests.faultproxy import FaultProxy
from tests.helpers import read, write


def test_sigterm_drains_for_at_most_the_drain_timeout_and_the_next_mount_uploads_the_rest(
        mounter, s3_url, moto_server):
    url, endpoint = s3_url
    proxy = FaultProxy(moto_server.port)
    try:
        node = mounter(url, ["--endpoint-url", proxy.endpoint, "--s3-timeout", "1", "--drain-timeout", "2"],
                       cache="c", name="m1")
        write(node.path("kept.pt"), b"a" * 1000)
        node.sync()
        proxy.outage = True  # the store is gone for this node from here on
        late = os.urandom(300_000)
        write(node.path("late.pt"), late)
        status = node.status_when_closed()
        assert status["at_risk_bytes"] >= len(late) and status["at_risk_oldest_s"] >= 0
        started = time.monotonic()
        node.process.send_signal(signal.SIGTERM)
        node.process.wait(timeout=30)
        assert time.monotonic() - started < 15  # 2 s of draining, then out, well before a SIGKILL at 30 s
        assert "not in the lake" in node.log() and "late.pt" in node.log()
    finally:
        proxy.stop()
    again = mounter(url, ["--endpoint-url", endpoint], cache="c", name="m2")  # the same cache dir, later
    again.sync()
    fresh = mounter(url, ["--endpoint-url", endpoint], cache="c3", name="m3")
    assert read(fresh.path("late.pt")) == late and read(fresh.path("kept.pt")) == b"a" * 1000
