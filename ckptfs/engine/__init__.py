"""trio tasks that move data between the cache and the lake: uploader/publisher and fetcher."""
