"""One configuration file for `ckptfs mount`: defaults for every option, and named lakes.

    # /etc/ckptfs/config.toml, then ~/.config/ckptfs/config.toml (or --config PATH); later wins
    [defaults]                  # any `ckptfs mount` option, by its long name with _ for -
    cache_size = "200G"
    drain_timeout = 25

    [lakes.ckpt]                # `ckptfs mount ckpt` (and `systemctl start ckptfs@ckpt`)
    url = "s3://bucket/prefix"
    mountpoint = "/ckpt"
    cache_dir = "/nvme/ckptfs/ckpt"
    profile = "ml"              # AWS profile and region (also --profile, --region)
    region = "us-east-1"

Flags given on the command line win over the file. An unknown key is an error naming it and the
file, as is a value of the wrong type.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

from ckptfs.errors import ConfigError

SYSTEM = "/etc/ckptfs/config.toml"
# option -> the types its value may have in the file (sizes and durations may be numbers or text)
OPTIONS: dict[str, tuple[type, ...]] = {
    "cache_dir": (str,), "cache_size": (str, int), "endpoint_url": (str,), "s3_timeout": (int, float),
    "metrics_address": (str,), "upload_while_writing": (str, int), "durability": (str,),
    "refresh": (int, float), "snapshot_every": (int,), "gc_every": (str, int), "drain_timeout": (int, float),
    "allow_other": (bool,), "no_drain": (bool,), "log_file": (str,), "verbose": (bool,),
    "profile": (str,), "region": (str,),
}
LAKE_KEYS = {"url": (str,), "mountpoint": (str,), **OPTIONS}


def user_file() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "ckptfs", "config.toml")


def load(path: str | None = None) -> dict[str, Any]:
    """{"defaults": {...}, "lakes": {name: {...}}} from the files that exist (or `path`, which must)."""
    merged: dict[str, Any] = {"defaults": {}, "lakes": {}}
    paths = [path] if path else [SYSTEM, user_file()]
    for file in paths:
        if not os.path.exists(file):
            if path:
                raise ConfigError(f"config file {file} does not exist")
            continue
        try:
            with open(file, "rb") as handle:
                value = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"{file}: {error}") from None
        for key in value:
            if key not in ("defaults", "lakes"):
                raise ConfigError(f"{file}: unknown section [{key}] (sections: [defaults], [lakes.NAME])")
        merged["defaults"].update(_checked(value.get("defaults", {}), OPTIONS, f"{file} [defaults]"))
        for name, lake in value.get("lakes", {}).items():
            if not isinstance(lake, dict):
                raise ConfigError(f"{file}: lakes.{name} must be a table ([lakes.{name}])")
            merged["lakes"].setdefault(name, {}).update(_checked(lake, LAKE_KEYS, f"{file} [lakes.{name}]"))
    return merged


def _checked(table: dict[str, Any], allowed: dict[str, tuple[type, ...]], where: str) -> dict[str, Any]:
    for key, value in table.items():
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(allowed))})")
        if not isinstance(value, allowed[key]) or (isinstance(value, bool) and bool not in allowed[key]):
            raise ConfigError(f"{where}: {key} = {value!r} is not a {' or '.join(t.__name__ for t in allowed[key])}")
    return dict(table)
