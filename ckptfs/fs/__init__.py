"""The FUSE layer: the pyfuse3 Operations adapter and the read-only .versions view."""
