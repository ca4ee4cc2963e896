"""Test helpers: a real ckptfs mount run as a subprocess, and a moto_server process, both tracked by pid."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

FUSERMOUNT = "fusermount3"


def read(path) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def write(path, data: bytes, mode: str = "wb") -> None:
    with open(path, mode) as file:
        file.write(data)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_mounted(path: str) -> bool:
    # /proc/mounts escapes space, tab, newline and backslash in paths as octal (\040 ...).
    with open("/proc/mounts") as mounts:
        return any(_unescape(line.split()[1]) == path for line in mounts)


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def force_unmount(path: str) -> None:
    if is_mounted(path):
        subprocess.run([FUSERMOUNT, "-u", "-z", path], capture_output=True)


class Mount:
    """A ckptfs daemon in the foreground, in its own process, mounted on `mountpoint`."""

    def __init__(self, store_url: str | None, mountpoint: str, cache_dir: str, log_file: str,
                 *, extra: list[str] | None = None, env: dict | None = None) -> None:
        self.store_url = store_url
        self.mountpoint = mountpoint
        self.cache_dir = cache_dir
        self.log_file = log_file
        self.extra = extra or []
        self.env = env
        self.process: subprocess.Popen | None = None
        os.makedirs(mountpoint, exist_ok=True)

    def start(self, timeout: float = 30) -> Mount:
        command = [sys.executable, "-m", "ckptfs", "mount"]
        command += [self.store_url] if self.store_url else []
        command += [self.mountpoint, "--foreground", "--cache-dir", self.cache_dir, "--log-file", self.log_file]
        # Tests save versions milliseconds apart: a lake they create shows every close unless a test
        # asks for the default fold (its own --lake-setting comes later and wins).
        command += ["--lake-setting", "fold_s=0"]
        command += self.extra
        self.process = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out, err = self.process.communicate()
                raise RuntimeError(f"mount exited {self.process.returncode}: {err.decode()}{self.log()}")
            if is_mounted(self.mountpoint) and self._responds():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"mount did not come up in {timeout}s\n{self.log()}")

    def _responds(self) -> bool:
        try:
            os.getxattr(self.mountpoint, "user.ckptfs.status")
            return True
        except OSError:
            return False

    def path(self, *parts: str) -> str:
        return os.path.join(self.mountpoint, *parts)

    def status(self) -> dict:
        return json.loads(os.getxattr(self.mountpoint, "user.ckptfs.status"))

    def status_when_closed(self, timeout: float = 10) -> dict:
        """The status once no file is open for writing. The kernel sends RELEASE after close() has
        returned, so a version sealed at release (creat/O_TRUNC without writes, a mapping's last
        write-back) may still be open for a moment after the writer's close."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status["dirty_files"] == 0 or time.monotonic() > deadline:
                return status
            time.sleep(0.02)

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "ckptfs", *args], capture_output=True, text=True,
                                timeout=timeout, env=self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"ckptfs {' '.join(args)} failed: {result.stderr}")
        return result

    def sync(self, path: str | None = None) -> None:
        self.cli("sync", path or self.mountpoint)

    def unmount(self, timeout: float = 300) -> None:
        """Unmount the way a user does (fusermount3 -u) and wait for the daemon to drain and exit."""
        if self.process is None:
            return
        deadline = time.monotonic() + timeout
        try:
            while True:
                done = subprocess.run([FUSERMOUNT, "-u", self.mountpoint], capture_output=True, text=True)
                if done.returncode == 0 or self.process.poll() is not None or "busy" not in done.stderr:
                    break  # unmounted, or not mounted any more: the daemon is on its way out
                if time.monotonic() > deadline:
                    raise AssertionError(f"{FUSERMOUNT} -u {self.mountpoint}: {done.stderr.strip()}")
                time.sleep(0.2)  # a process still has the mount in use (a file open, a call under way)
            self.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the daemon (a crash) and clear the dead mount."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self.process is not None:
            for stream in (self.process.stdout, self.process.stderr):
                if stream:
                    stream.close()
        force_unmount(self.mountpoint)
        self.process = None

    def log(self) -> str:
        try:
            with open(self.log_file) as file:
                return file.read()
        except FileNotFoundError:
            return ""

    def assert_clean_log(self, allowed: tuple[str, ...] = ()) -> None:
        """Fail on any traceback or ERROR line the test did not expect."""
        for line in self.log().splitlines():
            if ("ERROR" in line or "Traceback" in line) and not any(text in line for text in allowed):
                pytest.fail(f"unexpected error in the daemon log: {line}\n{self.log()[-4000:]}")


def cli_in_process(*args: str) -> tuple[int, str, str]:
    """Run the ckptfs command in this process: (exit code, stdout, stderr). A subprocess would close
    this process's open files at its exec, and on a mount every close seals the file."""
    import contextlib
    import io

    from ckptfs import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


class MotoServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto_server did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
