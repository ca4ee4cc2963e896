"""Reading a lake without FUSE: ckptfs.open (a seekable file torch.load reads), `ckptfs ls` and
`ckptfs cp` (a file, a directory, an older version), on a local lake and on moto_server."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import time

import torch
import trio

import ckptfs
from ckptfs.lake import Lake
from ckptfs.store import RetryingStore, open_store
from tests.layers import ME, ROOT, mount_on, published, running, save


def _fill(lake: Lake, tmp_path, files: dict[bytes, bytes], mount_name: str = "a" * 16) -> None:
    async def main():
        mount = mount_on(tmp_path, mount_name, lake)
        async with running(mount):
            run = mount.files.journal.lookup(ROOT, b"run")
            directory = run if run is not None else mount.files.tree.mkdir(ROOT, b"run", 0o755, ME).ino
            for name, data in files.items():
                if name.startswith(b"run/"):
                    existing = mount.files.journal.lookup(directory, name[4:])
                    opened = (await mount.files.handles.open(existing, os.O_WRONLY | os.O_TRUNC) if existing
                              else mount.files.handles.create(directory, name[4:], 0o644, os.O_WRONLY, ME)[0])
                    await mount.files.handles.write(opened.fh, 0, data)
                    mount.files.handles.release(opened.fh)
                else:
                    await save(mount.files, name, data)
            await published(mount.files)
    trio.run(main)


def _lake(url: str, endpoint: str | None = None) -> Lake:
    lake = Lake(RetryingStore(open_store(url, endpoint_url=endpoint)))
    lake.open()
    return lake


def test_open_reads_any_range_and_torch_loads_from_the_lake(tmp_path):
    url = f"file://{tmp_path}/lake"
    lake = _lake(url)
    buffer = io.BytesIO()
    torch.save({"w": torch.randn(512, 1024), "step": 7}, buffer)
    big = random.Random(1).randbytes(7 * 1024 * 1024 + 5)
    _fill(lake, tmp_path, {b"model.pt": buffer.getvalue(), b"big.bin": big, b"small.txt": b"hello"})
    assert torch.load(ckptfs.open(url, "model.pt"))["step"] == 7
    with ckptfs.open(f"{url}/big.bin") as file:
        rng = random.Random(2)
        for _ in range(50):
            offset, size = rng.randrange(len(big)), rng.randrange(1, 3 * 1024 * 1024)
            file.seek(offset)
            assert file.read(size) == big[offset:offset + size]
        file.seek(-10, io.SEEK_END)
        assert file.read() == big[-10:]
    assert ckptfs.open(url, "small.txt").read() == b"hello"


def ckptfs_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ckptfs", *args], capture_output=True, text=True, timeout=120)


def test_ls_and_cp_of_a_file_a_directory_and_an_older_version(tmp_path, s3_url):
    url, endpoint = s3_url
    lake = _lake(url, endpoint)
    first = os.urandom(3 * 1024 * 1024)
    _fill(lake, tmp_path, {b"run/a.pt": first, b"run/b.txt": b"b"})
    between = time.time()
    time.sleep(0.01)
    second = os.urandom(2 * 1024 * 1024)
    _fill(lake, tmp_path, {b"run/a.pt": second}, mount_name="b" * 16)
    listed = json.loads(ckptfs_cli("ls", f"{url}/run", "--endpoint-url", endpoint, "--json").stdout)
    assert {entry["path"]: entry["size"] for entry in listed} == {"run/a.pt": len(second), "run/b.txt": 1}
    out = tmp_path / "out"
    result = ckptfs_cli("cp", f"{url}/run", str(out), "--endpoint-url", endpoint)
    assert result.returncode == 0, result.stderr
    assert (out / "a.pt").read_bytes() == second and (out / "b.txt").read_bytes() == b"b"
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(between)) + f".{int(between % 1 * 1000):03d}Z"
    result = ckptfs_cli("cp", f"{url}/run/a.pt", str(tmp_path / "old.pt"), "--at", at, "--endpoint-url", endpoint)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "old.pt").read_bytes() == first
    missing = ckptfs_cli("cp", f"{url}/run/nothing", str(tmp_path / "x"), "--endpoint-url", endpoint)
    assert missing.returncode == 1 and "nothing at" in missing.stderr
