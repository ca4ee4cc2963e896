"""ckptfs: a FUSE filesystem over an S3 checkpoint lake, with a write-back cache, dedup and versions."""

__version__ = "0.1.0"
