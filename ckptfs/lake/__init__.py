"""The durable lake format: chunker, chunk codec, manifests, namespace log. Plain synchronous Python."""

from ckptfs.lake.lake import Lake

__all__ = ["Lake"]
