"""S3Store: any S3-compatible endpoint through boto3.

Configuration is the standard AWS chain (environment, shared profile, instance role) plus an optional
endpoint URL; no secret ever passes through our arguments. One boto3 client is created per store and
shared by all threads (clients are thread-safe, sessions are not). boto3's own retries are turned off:
`RetryingStore` owns the retry policy, so this class only classifies failures.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

import boto3
import botocore.config
import botocore.exceptions
import botocore.handlers
import crc32c

from ckptfs.errors import ConfigError
from ckptfs.store.base import (
    ObjectArchived,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PermanentStoreError,
    PreconditionFailed,
    StoreError,
    TemporaryStoreError,
)

_TEMPORARY_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
                    "RequestTimeout", "RequestTimeTooSkewed", "Throttling", "ThrottlingException",
                    "OperationAborted",
                    # a body that did not match the checksum sent with it: changed on the way, sent again
                    "BadDigest", "XAmzContentSHA256Mismatch"}
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_PRECONDITION_CODES = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}


def crc32c_header(data: bytes) -> str:
    """The `x-amz-checksum-crc32c` value of a body: its CRC32C, big-endian, base64."""
    return base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode()


def classify(error: Exception, what: str) -> StoreError:
    """Map a boto3/botocore exception to our error classes, with a one-line message."""
    if isinstance(error, botocore.exceptions.ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        message = error.response.get("Error", {}).get("Message") or code
        if code == "InvalidObjectState":
            return ObjectArchived(f"{what}: the object is in an archive storage class; restore it first "
                                  "(aws s3api restore-object --restore-request Days=7, then wait for it)")
        if code in _NOT_FOUND_CODES and code != "NoSuchBucket":
            return ObjectNotFound(f"{what}: not found")
        if code in _PRECONDITION_CODES or status in ("412", "409"):
            return PreconditionFailed(f"{what}: precondition failed ({code})")
        if code in _TEMPORARY_CODES or status.startswith("5") or status == "429":
            return TemporaryStoreError(f"{what}: {code} {message}".strip())
        if code == "NoSuchBucket":
            return PermanentStoreError(f"{what}: the bucket does not exist")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return PermanentStoreError(f"{what}: access denied ({code}); check the AWS credentials")
        return PermanentStoreError(f"{what}: {code} {message}".strip())
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return PermanentStoreError(f"{what}: no AWS credentials found (environment, profile or role)")
    if isinstance(error, (botocore.exceptions.EndpointConnectionError,
                          botocore.exceptions.ConnectionClosedError,
                          botocore.exceptions.ReadTimeoutError,
                          botocore.exceptions.ConnectTimeoutError,
                          botocore.exceptions.ResponseStreamingError)):
        return TemporaryStoreError(f"{what}: {error}")
    if isinstance(error, (ConnectionError, TimeoutError)):
        return TemporaryStoreError(f"{what}: {error}")
    if isinstance(error, botocore.exceptions.BotoCoreError):
        return PermanentStoreError(f"{what}: {error}")
    raise error


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class S3Store(ObjectStore):
    def __init__(self, bucket: str, prefix: str, *, endpoint_url: str | None = None,
                 max_connections: int = 32, timeout: float = 60) -> None:
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise ConfigError(f"s3://{bucket}: not an S3 bucket name (3 to 63 lowercase letters, digits, dots and "
                              "hyphens, starting and ending with a letter or digit)")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        config = botocore.config.Config(
            max_pool_connections=max_connections,
            # One attempt per call: `max_attempts` counts retries (1 would be a hidden second try,
            # uncounted and unpaced); RetryingStore retries with backoff and counts every one.
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=min(10, timeout), read_timeout=timeout,
            # A body's integrity on the way is the CRC32C `put` sends (S3 refuses a body that does
            # not match it) at ~15 GB/s in hardware, not botocore's own: with no checksum it SHA-256
            # signs every body (0.6 CPU s/GiB here), and its CRC32 costs as much. GET answers are
            # not checked by botocore: every chunk is verified against its xxh3-128 id and every
            # manifest and segment against its own checksum (docs/FORMAT.md).
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
            s3={"payload_signing_enabled": False},
        )
        session = boto3.session.Session()
        self.client = session.client("s3", endpoint_url=endpoint_url, config=config)
        # A PUT's body stays bytes. botocore wraps bytes in a BytesIO, which urllib3 then sends 16 KiB
        # at a time through Python (65,536 reads and sends per GiB, holding the GIL); bytes go out in
        # one sendall, which releases it. (A file-like body also made botocore ask for
        # `100-continue`: one more round trip per PUT.)
        self.client.meta.events.unregister("before-parameter-build.s3.PutObject",
                                           botocore.handlers.convert_body_to_file_like_object)
        self.max_connections = max_connections

    def _key(self, key: str) -> str:
        return self.prefix + key

    def check_access(self, *, create: bool = True) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise PermanentStoreError(f"bucket {self.bucket!r} does not exist") from None
            raise classify(error, f"bucket {self.bucket!r}") from None
        except Exception as error:  # noqa: BLE001 - classify re-raises what it does not know
            raise classify(error, f"S3 endpoint {self.client.meta.endpoint_url}") from None

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                   ChecksumCRC32C=crc32c_header(data), **extra)
        except Exception as error:  # noqa: BLE001
            raise classify(error, f"PUT {key}") from None

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        extra = {}
        if start is not None or end is not None:
            extra["Range"] = f"bytes={start or 0}-{'' if end is None else end - 1}"
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)
            return response["Body"].read()
        except Exception as error:  # noqa: BLE001
            raise classify(error, f"GET {key}") from None

    def get_parts(self, key: str, start: int, sizes: list[int]) -> list[bytes]:
        """One ranged GET whose body is read part by part: the socket's bytes go straight into
        each part (http.client reads a large amount into a bytes of its own), where reading the
        whole body and slicing it copied every chunk once more, holding the GIL (issue 20)."""
        total = sum(sizes)
        if total == 0:
            return [b"" for _ in sizes]
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key),
                                               Range=f"bytes={start}-{start + total - 1}")
            body = response["Body"]
            parts = [body.read(size) if size else b"" for size in sizes]
        except Exception as error:  # noqa: BLE001
            raise classify(error, f"GET {key}") from None
        return parts

    def size(self, key: str) -> int | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]
        except Exception as error:  # noqa: BLE001
            classified = classify(error, f"HEAD {key}")
            if isinstance(classified, ObjectNotFound):
                return None
            raise classified from None

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        arguments = {"Bucket": self.bucket, "Prefix": self._key(prefix)}
        if start_after is not None:
            arguments["StartAfter"] = self._key(start_after)
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**arguments):
                for item in page.get("Contents", []):
                    yield item["Key"][len(self.prefix):]
        except Exception as error:  # noqa: BLE001
            raise classify(error, f"LIST {prefix}") from None

    def list_stat(self, prefix: str) -> Iterator[ObjectInfo]:
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                              Prefix=self._key(prefix)):
                for item in page.get("Contents", []):
                    modified = item["LastModified"]
                    yield ObjectInfo(item["Key"][len(self.prefix):], item["Size"],
                                     int(modified.timestamp()) * 1_000_000_000 + modified.microsecond * 1000,
                                     item.get("StorageClass", "STANDARD"))
        except Exception as error:  # noqa: BLE001
            raise classify(error, f"LIST {prefix}") from None

    def set_storage_class(self, key: str, storage_class: str) -> None:
        try:
            self.client.copy_object(Bucket=self.bucket, Key=self._key(key), StorageClass=storage_class,
                                    CopySource={"Bucket": self.bucket, "Key": self._key(key)},
                                    MetadataDirective="COPY")
        except Exception as error:  # noqa: BLE001
            raise classify(error, f"COPY {key} to {storage_class}") from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as error:  # noqa: BLE001
            raise classify(error, f"DELETE {key}") from None

    def delete_many(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes up to 1,000 keys
            batch = keys[start:start + 1000]
            try:
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": self._key(key)} for key in batch], "Quiet": True})
            except Exception as error:  # noqa: BLE001
                raise classify(error, f"DELETE {len(batch)} keys from {batch[0]}") from None
            failed = answer.get("Errors") or []
            if failed:  # per-key failures come in a 200 answer, classified as the same error would be
                first = failed[0]
                error = botocore.exceptions.ClientError(
                    {"Error": {"Code": first.get("Code", ""), "Message": first.get("Message", "")}}, "DeleteObjects")
                raise classify(error, f"DELETE {first.get('Key')} ({len(failed)} of {len(batch)} keys not deleted)")
