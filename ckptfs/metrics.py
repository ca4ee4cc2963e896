"""Prometheus metrics of a mount, served on an address the user chooses (`--metrics-address`).

The HTTP server runs in prometheus-client's own thread and must not touch the journal, so it reads a
snapshot of the status that a trio task refreshes every second on the trio thread (swapping one dict
reference is atomic). Values are as old as one refresh at most.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from ckptfs.errors import ConfigError

_GAUGES = {
    "dirty_files": "files open for writing with unsealed data",
    "dirty_bytes": "bytes of unsealed data",
    "dirty_uploaded_bytes": "bytes of unsealed data already uploaded (upload while writing)",
    "uploading_files": "sealed versions waiting for or in upload",
    "uploading_bytes": "bytes of sealed versions not yet uploaded",
    "oldest_pending_age_s": "age in seconds of the oldest version not yet committed",
    "at_risk_bytes": "bytes a loss of this node now would lose: written here, not yet in the lake",
    "at_risk_oldest_s": "age in seconds of the oldest change not yet in the lake",
    "cache_hit_ratio": "share of the bytes read from committed versions that the caches served",
    "events_pending": "namespace events waiting to be published",
    "staged_bytes": "bytes in staging files on the cache disk",
    "store_retrying": "1 while the object store is failing and being retried",
}
_COUNTERS = {
    "committed_versions": "versions committed to the lake",
    "committed_bytes": "logical bytes of committed versions",
    "new_chunk_bytes": "raw bytes of chunks the lake did not have",
    "stored_bytes": "bytes written to the lake for chunks (after compression) and pack indexes",
    "packs_written": "pack objects written to the lake",
    "store_retries": "object store requests retried",
    "backpressure_waits": "writes that waited for uploads to free cache space",
    "backpressure_seconds": "seconds writers spent waiting for cache space",
    "fetched_bytes": "bytes read from the lake (S3 egress)",
}


class StatusCollector(Collector):
    """Serves the newest status the mount's trio thread handed it (the HTTP server's thread must
    not read the journal itself)."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot

    def update(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot  # one assignment: the server's thread sees the old or the new one

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        snapshot = self.snapshot
        for key, text in _GAUGES.items():
            name = "ckptfs_" + key.removesuffix("_s") + ("_seconds" if key.endswith("_s") else "")
            yield GaugeMetricFamily(name, text, value=float(snapshot.get(key) or 0))
        for key, text in _COUNTERS.items():
            yield CounterMetricFamily("ckptfs_" + key, text, value=float(snapshot.get(key) or 0))
        requests = CounterMetricFamily("ckptfs_store_requests", "object store requests by S3 request type "
                                       "(each attempt; a LIST per 1,000 keys)", labels=["kind"])
        for kind, number in sorted((snapshot.get("store_requests") or {}).items()):
            requests.add_metric([kind], float(number))
        yield requests
        errors = CounterMetricFamily("ckptfs_store_errors", "object store requests that failed, by S3 request "
                                     "type and whether a retry may help", labels=["kind", "class"])
        for name, number in sorted((snapshot.get("store_errors") or {}).items()):
            kind, _, category = name.partition(" ")
            errors.add_metric([kind, category], float(number))
        yield errors
        for name, figures in sorted((snapshot.get("latency_seconds") or {}).items()):
            histogram = HistogramMetricFamily(f"ckptfs_{name}_latency_seconds",
                                              f"seconds the kernel's {name} requests took to answer (the save stall)")
            bounds = [str(bound) for bound in figures["buckets"]] + ["+Inf"]
            histogram.add_metric([], list(zip(bounds, map(float, figures["counts"]), strict=True)), figures["sum"])
            yield histogram


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (HOST defaults to 127.0.0.1); ConfigError for anything else."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--metrics-address {text!r}: expected HOST:PORT with a port from 1 to 65535 "
                          "(e.g. 127.0.0.1:9464)")
    return host or "127.0.0.1", int(port)


def check_address(text: str) -> None:
    """Refuse, before the daemon starts, an address that does not parse or cannot be bound."""
    host, port = parse_address(text)
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        raise ConfigError(f"--metrics-address {text}: cannot listen there ({error.strerror or error})") from None


def start_metrics(address: str, status: Callable[[], dict[str, Any]]) -> StatusCollector:
    """Serve metrics on `address` (bound before this returns: a failure stops the mount before it
    says it is ready); update_metrics keeps them current."""
    from prometheus_client import start_http_server

    collector = StatusCollector(status())
    registry = CollectorRegistry()
    registry.register(collector)
    host, port = parse_address(address)
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise ConfigError(f"--metrics-address {address}: cannot listen there ({error.strerror or error})") from None
    return collector


async def update_metrics(collector: StatusCollector, status: Callable[[], dict[str, Any]]) -> None:
    while True:
        await trio.sleep(1)
        collector.update(status())
