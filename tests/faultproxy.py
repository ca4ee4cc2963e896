"""A fault-injecting HTTP proxy between boto3 and the moto server, for S3 fault tests.

It forwards every request to the upstream server and, on a chosen fraction of them, answers instead
with 500 InternalError or 503 SlowDown, resets the connection, stalls past the client's read timeout,
or dribbles the response body slowly; the kind `flip` (asked for by name) changes a byte of a PUT
body on the way. It checks a body against its `x-amz-checksum-crc32c` as S3 does (moto does not),
answering 400 BadDigest. `outage` resets every connection; `deny` answers 403
AccessDenied and `bucket_missing` 404 NoSuchBucket to everything. Listens on 127.0.0.1 only.

It also shapes traffic like a remote object store (tests/s3model.py sets it up): `delay_seconds`
before the first byte of every response, and `bandwidth` bytes per second per connection each way;
`by_kind` counts requests as GET, PUT, LIST, HEAD, DELETE, POST.
"""

from __future__ import annotations

import base64
import http.client
import random
import socket
import struct
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import crc32c

KINDS = ("500", "503", "reset", "stall", "slow")
_ERROR_BODY = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
               '<RequestId>fault</RequestId></Error>')


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-answer (its timeout, a cancelled read) is what a server sees
        every day, not a failure of the proxy: only other errors are printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FaultProxy:
    def __init__(self, upstream_port: int, *, seed: int = 0, stall_seconds: float = 4.0) -> None:
        self.upstream_port = upstream_port
        self.fault_rate = 0.0
        self.kinds: tuple[str, ...] = KINDS
        self.outage = False
        self.deny = False
        self.bucket_missing = False
        self.stall_seconds = stall_seconds
        self.delay_seconds = 0.0  # added to every forwarded request: a slow store
        self.bandwidth = 0.0  # bytes per second per connection, each way (0: unlimited)
        self.by_kind: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _error(self, status: int, code: str, message: str) -> None:
                body = _ERROR_BODY.format(code=code, message=message).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _pace(self, size: int, started: float) -> None:
                if proxy.bandwidth:
                    time.sleep(max(0.0, started + size / proxy.bandwidth - time.monotonic()))

            def _kind(self) -> str:
                if self.command == "GET" and ("list-type=" in self.path or self.path.rstrip("/").count("/") <= 1):
                    return "LIST"
                return self.command

            def _handle(self) -> None:
                started = time.monotonic()
                body = self._body()
                self._pace(len(body), started)  # the upload took this long on a capped connection
                with proxy._lock:
                    proxy.by_kind[self._kind()] += 1
                fault = proxy._choose()
                if fault == "flip" and body:  # a byte changed between the client and the store
                    position = proxy._random.randrange(len(body))
                    body = body[:position] + bytes([body[position] ^ 0x01]) + body[position + 1:]
                claimed = self.headers.get("x-amz-checksum-crc32c")
                if claimed is not None and base64.b64decode(claimed) != crc32c.crc32c(body).to_bytes(4, "big"):
                    return self._error(400, "BadDigest", "The CRC32C you specified did not match the calculated "
                                       "checksum.")
                if fault == "reset":
                    return self._reset()
                if fault == "500":
                    return self._error(500, "InternalError", "injected")
                if fault == "503":
                    return self._error(503, "SlowDown", "injected")
                if fault == "deny":
                    return self._error(403, "AccessDenied", "Access Denied")
                if fault == "no-bucket":
                    return self._error(404, "NoSuchBucket", "The specified bucket does not exist")
                if fault == "stall":
                    time.sleep(proxy.stall_seconds)
                    return self._reset()
                if proxy.delay_seconds:
                    time.sleep(proxy.delay_seconds)
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                hop_by_hop = ("transfer-encoding", "connection")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop_by_hop}
                headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                payload = response.read()
                upstream.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if fault == "slow":
                    for start in range(0, len(payload), 64 * 1024):
                        self.wfile.write(payload[start:start + 64 * 1024])
                        self.wfile.flush()
                        time.sleep(0.02)
                elif proxy.bandwidth:
                    sending = time.monotonic()
                    for start in range(0, len(payload), 256 * 1024):
                        self.wfile.write(payload[start:start + 256 * 1024])
                        self._pace(start + 256 * 1024, sending)
                else:
                    self.wfile.write(payload)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _handle

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _choose(self) -> str | None:
        with self._lock:
            self.counts["requests"] += 1
            if self.outage:
                fault = "reset"
            elif self.deny:
                fault = "deny"
            elif self.bucket_missing:
                fault = "no-bucket"
            elif self._random.random() < self.fault_rate:
                fault = self._random.choice(self.kinds)
            else:
                return None
            self.counts[fault] += 1
            return fault

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
