"""ckptfs: a FUSE filesystem over an S3 checkpoint lake, with a write-back cache, dedup and versions."""

__version__ = "0.1.0"


def open(url: str, path: str | None = None, *, at_ns: int | None = None, endpoint_url: str | None = None):  # noqa: A001
    """A file of a lake, read-only and seekable, without FUSE: `torch.load(ckptfs.open("s3://bucket/prefix",
    "run1/model.pt"))`; `at_ns` for the version current at that time (ckptfs/reader.py)."""
    from ckptfs.reader import open_version

    return open_version(url, path, at_ns=at_ns, endpoint_url=endpoint_url)
