"""The engine: trio tasks that move data between the cache and the lake (uploads and publication,
reads and read-ahead, eviction and spilling, following other mounts, snapshots). The file system
layer above reaches it only through `engine/interface.py`; it never calls into the layers above."""
