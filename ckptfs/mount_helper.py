"""`mount -t fuse.ckptfs SOURCE DIR -o OPTIONS`, and the same as an /etc/fstab line.

mount(8) runs `/sbin/mount.fuse.ckptfs SOURCE DIR -o OPTIONS` (scripts/install.sh puts it there);
this turns each option into the `ckptfs mount` flag of the same name (`cache_dir=/nvme/ckptfs` is
`--cache-dir /nvme/ckptfs`, `allow_other` is `--allow-other`) and runs it, which returns once the
mount answers. SOURCE is the store URL, or `ckptfs` for the embedded lake. Options mount(8) and
systemd act on (`_netdev`, `nofail`, `noauto`, `x-systemd.*`, `defaults`, `rw`, ...) are passed over;
anything else is an error naming the option.

    s3://bucket/prefix /ckpt fuse.ckptfs _netdev,nofail,x-systemd.automount,cache_dir=/nvme/ck,cache_size=200G 0 0
"""

from __future__ import annotations

import os
import sys

VALUES = ("cache_dir", "cache_size", "endpoint_url", "durability", "refresh", "drain_timeout", "gc_every",
          "metrics_address", "upload_while_writing", "s3_timeout", "snapshot_every", "log_file")
FLAGS = ("allow_other", "no_drain", "reset_cache_dir")
PASSED_OVER = {"rw", "defaults", "auto", "noauto", "_netdev", "nofail", "user", "users", "nouser", "nosuid",
               "nodev", "noexec", "exec", "dev", "suid", "relatime", "noatime", "atime", "async", "sync"}
EMBEDDED = ("ckptfs", "embedded", "none")


class HelperError(Exception):
    pass


def command(argv: list[str]) -> list[str]:
    """The `ckptfs mount` arguments for a mount helper's SOURCE DIR [-o OPTIONS] [-n] [-s] [-f] [-v]."""
    positional, options = [], []
    items = iter(argv)
    for item in items:
        if item == "-o":
            options += next(items, "").split(",")
        elif item.startswith("-o"):
            options += item[2:].split(",")
        elif item in ("-n", "-s", "-f", "-v", "-i"):
            continue  # no mtab, sloppy, fake, verbose, no helper recursion: nothing for ckptfs to do
        else:
            positional.append(item)
    if len(positional) != 2:
        raise HelperError("usage: mount.fuse.ckptfs SOURCE MOUNTPOINT [-o OPTIONS]")
    source, mountpoint = positional
    flags: list[str] = []
    for option in filter(None, (option.strip() for option in options)):
        name, has_value, value = option.partition("=")
        if name == "ro":
            raise HelperError("ckptfs mounts are read-write (the history under .versions is read-only)")
        if name in PASSED_OVER or name.startswith(("x-", "comment")):
            continue
        if name in VALUES and has_value and value:
            flags += ["--" + name.replace("_", "-"), value]
        elif name in FLAGS and not has_value:
            flags.append("--" + name.replace("_", "-"))
        else:
            raise HelperError(f"unknown mount option {option!r}; ckptfs takes "
                              + ", ".join([f"{v}=..." for v in VALUES] + list(FLAGS)))
    return ["mount", *([] if source in EMBEDDED else [source]), mountpoint, *flags]


def main(argv: list[str] | None = None) -> int:
    try:
        arguments = command(sys.argv[1:] if argv is None else argv)
    except HelperError as error:
        print(f"mount.fuse.ckptfs: {error}", file=sys.stderr)
        return 1
    os.execv(sys.executable, [sys.executable, "-m", "ckptfs", *arguments])
    return 1  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
