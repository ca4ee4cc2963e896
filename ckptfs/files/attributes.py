"""What stat(2) shows of an entry, and what a SETATTR asks to change: plain values, no FUSE types."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Attributes:
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int = 0
    rdev: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0


@dataclass
class AttributeChanges:
    """Each field set (not None) is to be changed."""
    size: int | None = None
    mode: int | None = None  # permission bits
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None

    @property
    def metadata(self) -> bool:
        return any(value is not None for value in (self.mode, self.uid, self.gid, self.atime_ns, self.mtime_ns))


@dataclass
class Caller:
    """Who makes a request (the adapter passes pyfuse3's RequestContext, which has these fields)."""
    uid: int = 0
    gid: int = 0
    umask: int = 0o022
