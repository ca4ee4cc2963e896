"""A model of S3 for benchmarks: moto_server (for the API) behind the shaping proxy (for the costs).

moto alone is CPU-bound, has no per-request latency and serves ranged GETs slowly: figures measured
on it did not hold on a real S3 implementation. The model adds what AWS's published guidance says a
client in the same region should plan for:
* FIRST_BYTE_S: latency before the first byte of each request. "Amazon S3 Performance Guidelines"
  and the "Best Practices Design Patterns: Optimizing Amazon S3 Performance" whitepaper give
  100-200 ms for small objects; the model takes the low end, which favours request-heavy designs
  least of the two.
* CONNECTION_BYTES_S: per-connection bandwidth. The same guidance: "make one concurrent request for
  each 85-90 MB/s of desired network throughput".
Request counts by type (`by_kind`) and S3 Standard request prices (us-east-1: $0.005 per 1,000 PUT,
COPY, POST and LIST; $0.0004 per 1,000 GET and other reads) turn a run into a bill. The moto server
still spends its own CPU on each request, on the same cores as the client: a benchmark says so.
"""

from __future__ import annotations

import os
import uuid

import boto3

from tests.faultproxy import FaultProxy
from tests.helpers import MotoServer

# moto accepts any credentials; tests and benchmarks on it use these where none are set.
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}


def use_test_credentials() -> None:
    """Credentials for moto, unless the environment gives some."""
    for name, value in TEST_CREDENTIALS.items():
        os.environ.setdefault(name, value)


FIRST_BYTE_S = 0.100
CONNECTION_BYTES_S = 85e6
PRICE_PER_1000 = {"PUT": 0.005, "POST": 0.005, "LIST": 0.005, "GET": 0.0004, "HEAD": 0.0004, "DELETE": 0.0}


class S3Model:
    def __init__(self, *, first_byte_s: float = FIRST_BYTE_S, connection_bytes_s: float = CONNECTION_BYTES_S) -> None:
        use_test_credentials()
        self.moto = MotoServer()
        self.proxy = FaultProxy(self.moto.port)
        self.proxy.delay_seconds = first_byte_s
        self.proxy.bandwidth = connection_bytes_s
        self.endpoint = self.proxy.endpoint  # what clients use
        self.direct = self.moto.endpoint  # unshaped, for setting up fixtures quickly

    def bucket(self) -> str:
        name = f"lake-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.direct).create_bucket(Bucket=name)
        return name

    def counts(self) -> dict[str, int]:
        return dict(self.proxy.by_kind)

    def reset_counts(self) -> None:
        self.proxy.by_kind.clear()

    @staticmethod
    def cost(counts: dict[str, int]) -> float:
        return sum(PRICE_PER_1000.get(kind, 0.0) * number / 1000 for kind, number in counts.items())

    def stop(self) -> None:
        self.proxy.stop()
        self.moto.stop()
