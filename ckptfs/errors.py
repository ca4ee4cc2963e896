"""Error types shared by every layer.

A `CkptfsError` carries a message meant for a human and the errno the FUSE layer should answer with;
the CLI prints the message on one line. Nothing here imports FUSE or trio.
"""

from __future__ import annotations

import errno as errno_codes


class CkptfsError(Exception):
    """An error with a one-line, human-readable message and the errno it maps to at the FUSE boundary."""

    errno: int = errno_codes.EIO

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        if errno is not None:
            self.errno = errno


class ConfigError(CkptfsError):
    """Bad input from the user: a store URL, a mount point, a cache directory."""

    errno = errno_codes.EINVAL


class CorruptObjectError(CkptfsError):
    """An object in the lake does not match its id or its declared format. Never served as data."""

    errno = errno_codes.EIO


class FsError(CkptfsError):
    """The answer to a file system request that cannot be done as asked (ENOENT, EEXIST, EROFS, ...).
    Part of normal operation: the FUSE adapter answers with its errno and logs nothing."""
