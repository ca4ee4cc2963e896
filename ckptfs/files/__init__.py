"""The mount's file system, without FUSE: the tree of entries, file versions from first write to
seal, open handles, and the status and barrier figures of the control interface.

Requests arrive as plain calls (inode numbers, names as bytes, offsets) from the pyfuse3 adapter in
`ckptfs/fs`, or from tests that drive this layer directly; answers are plain values and `FsError`
with an errno. Everything runs on the trio thread; every await inside a request is a point where
other requests run (docs/DESIGN.md, "Concurrency protocol").
"""

from ckptfs.files.attributes import Caller
from ckptfs.files.filesystem import FileSystem

__all__ = ["Caller", "FileSystem"]
