"""Object stores: the interface, the embedded local-directory store and the S3 store."""

from __future__ import annotations

import os
import re
from urllib.parse import urlparse

from ckptfs.errors import ConfigError
from ckptfs.store.base import (
    ARCHIVE_CLASSES,
    STORAGE_CLASSES,
    ObjectArchived,
    ObjectNotFound,
    ObjectStore,
    PermanentStoreError,
    PreconditionFailed,
    RetryingStore,
    StoreError,
    TemporaryStoreError,
)
from ckptfs.store.localdir import LocalDirStore

__all__ = ["ARCHIVE_CLASSES", "STORAGE_CLASSES", "ObjectArchived", "ObjectNotFound", "ObjectStore",
           "PermanentStoreError", "PreconditionFailed", "RetryingStore", "StoreError", "TemporaryStoreError",
           "LocalDirStore", "open_store"]


_MISTYPED = re.compile(r"^(s3|file|gs|https?)(:/?[^/]|/+|:?$)", re.IGNORECASE)  # s3//b/p, s3:/b, file:/x


def open_store(url: str, *, endpoint_url: str | None = None, timeout: float = 60) -> ObjectStore:
    """Build the store a URL names: `s3://bucket/prefix`, `file:///path` or a plain directory path."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"store URL {url!r} names no bucket (expected s3://bucket/prefix)")
        from ckptfs.store.s3 import S3Store  # boto3 is slow to import; only pay for it when used

        return S3Store(parsed.netloc, parsed.path, endpoint_url=endpoint_url, timeout=timeout)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"store URL {url!r}: file URLs take a local path (file:///path)")
        return LocalDirStore(parsed.path)
    if parsed.scheme == "" and url:
        if _MISTYPED.match(url):
            raise ConfigError(f"store URL {url!r} looks mistyped: s3://bucket/prefix or file:///path (a local "
                              f"directory of that name: ./{url})")
        return LocalDirStore(os.path.abspath(url))
    raise ConfigError(f"unknown store URL {url!r}: use s3://bucket/prefix or file:///path")
