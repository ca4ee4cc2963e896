"""The README's set-up as a new user meets it: the demo's output in a file, apt's lock held by
another run, and the README's figures against the benchmark run they quote."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_written_to_a_file_has_no_terminal_escapes(tmp_path):
    """The demo, its output in a file and no stdin (as CI and `scripts/demo.sh > log` run it):
    it ends cleanly, shows the versions it kept, and writes no ANSI escapes into the file."""
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        done = subprocess.run(["bash", str(ROOT / "scripts/demo.sh")], stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=600, cwd=tmp_path)
    text = log.read_bytes()
    assert done.returncode == 0, text.decode(errors="replace")[-3000:]
    assert b"\x1b" not in text
    assert b"== ls " in text and b"every overwrite kept" in text
    assert re.search(rb"ckptfs: unmounted \S+/ckpt", text)
    assert re.search(rb"dedup ratio\s+\S+ (\d+\.\d+)x", text)


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("apt-get") or not shutil.which("dpkg-deb"),
                    reason="needs root and Debian's apt")
def test_apt_installs_wait_for_another_runs_lock(tmp_path):
    """Another apt run (unattended-upgrades at boot) holds dpkg's front-end lock: the install waits
    for it and then succeeds, instead of failing at once with `Could not get lock`. The package is a
    local .deb made here, so apt needs no network."""
    package = "ckptfs-test-apt-lock"
    tree = tmp_path / "deb"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: ckptfs tests <tests@ckptfs.invalid>\nDescription: waits for apt's lock\n")
    deb = tmp_path / f"{package}.deb"
    subprocess.run(["dpkg-deb", "--build", str(tree), str(deb)], check=True, capture_output=True)
    lock = os.open("/var/lib/dpkg/lock-frontend", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.lockf(lock, fcntl.LOCK_EX)  # what apt itself takes (fcntl F_SETLK)
        install = subprocess.Popen([str(ROOT / "scripts/apt_install.sh"), str(deb)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        time.sleep(4)
        assert install.poll() is None, install.stdout.read().decode()  # still waiting, not failed
        fcntl.lockf(lock, fcntl.LOCK_UN)
        out, _ = install.communicate(timeout=120)
        assert install.returncode == 0, out.decode()
        state = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
        assert state.stdout == "install ok installed"
        again = subprocess.run([str(ROOT / "scripts/apt_install.sh"), str(deb)], capture_output=True, text=True)
        assert again.returncode == 0 and again.stdout == ""  # installed already: nothing to do
    finally:
        os.close(lock)
        subprocess.run(["dpkg", "--purge", package], capture_output=True)


def test_the_readmes_figures_are_those_of_the_benchmark_run():
    """Every figure the README's opening quotes (seconds, ratios, request counts) is in
    docs/BENCHMARKS.md, the run it names."""
    readme = (ROOT / "README.md").read_text()
    opening = readme[:readme.index("\n## ")]
    benchmarks = (ROOT / "docs/BENCHMARKS.md").read_text().replace("–", "-").replace("×", "x")
    figures = re.findall(r"\d+\.\d+(?:-\d+\.\d+)?x?|\d+ (?:PUTs|ranged GETs)", opening)
    assert len(figures) >= 6, figures
    for figure in figures:
        if figure.endswith(("PUTs", "GETs")):
            count = figure.split()[0]
            assert re.search(rf"\| {count}\.00 \({count}\.00-{count}\.00\) \|", benchmarks), figure
        else:
            low_high = figure.rstrip("x").split("-")
            wanted = f"{low_high[0]}-{low_high[1]}" if len(low_high) == 2 else low_high[0]
            assert wanted in benchmarks, f"README says {figure}, docs/BENCHMARKS.md does not"


@pytest.mark.skipif(os.environ.get("CKPTFS_STOCK_PYFUSE3") == "1", reason="the released pyfuse3 was asked for")
def test_the_suite_runs_on_the_pyfuse3_build_the_install_makes():
    """scripts/install.sh rebuilds pyfuse3 with the GIL let go of around its byte work
    (scripts/build_pyfuse3_nogil.py, docs/DESIGN.md "pyfuse3 without the GIL"), and `ckptfs --version`
    says which build runs. A suite run without scripts/install.sh first fails here, not later."""
    import importlib.metadata
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from build_pyfuse3_nogil import LABEL
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert importlib.metadata.version("pyfuse3") == LABEL, "run scripts/install.sh (or set CKPTFS_STOCK_PYFUSE3=1)"
    shown = subprocess.run([sys.executable, "-m", "ckptfs", "--version"], capture_output=True, text=True)
    assert shown.returncode == 0 and f"(pyfuse3 {LABEL})" in shown.stdout, shown
