"""The FUSE layer: the pyfuse3 Operations adapter (operations.py) over the file system of
`ckptfs/files` (the read-only `.versions` view lives in files/history.py), and what the kernel must
forget after a refresh (KernelCaches)."""
