"""Local state on the cache disk: the SQLite journal, staging files and the chunk read cache."""
